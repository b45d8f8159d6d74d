"""Eviction through the engine: every technique, both ways of saying how much to keep.

The store's own mechanism (scorers, selection, compaction) is checked against a NumPy model
in tests/wasm/test_wasm_evict.py, and the scorers it shares with kvpress against kvpress in
test_kvpress.py; here the techniques' policy is checked: when they select, how many entries
each head keeps, that the bytes are the kept entries' (plus their index), that rolling
budgets hold at every step, that eviction composes with quantization, and that bad settings
are refused before anything changes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvlab import formats
from kvlab.engine import Engine, Request
from kvlab.techniques import REGISTRY, PolicyError

pytestmark = pytest.mark.slow

EVICTING = sorted(n for n, t in REGISTRY.items() if t.family == "evict")
ROLLING = {n for n in EVICTING if REGISTRY[n].rolling}
NEW = 8  # tokens generated: NEW - 1 are fed back after the prompt
BUDGET = 96


@pytest.fixture(scope="module")
def prompt(engine):
    """About 400 tokens of real text (CPython's reference documentation)."""
    from kvlab.texts import token_stream

    ids, _ = token_stream(engine.tokenizer, 400, start=3)
    text = engine.tokenizer.decode(ids)
    return text, len(engine.tokenizer.encode(text))


def run(engine, text, policy, events=None):
    return engine.generate(Request(prompt=text, max_new_tokens=NEW, ignore_eos=True, policy=policy),
                           on_token=None if events is None else events.append)


def row_bytes(policy) -> tuple[int, int]:
    q = policy.get("quant", {})
    k, v, g = q.get("k_bits", 32), q.get("v_bits", 32), q.get("group_size", 32)
    return formats.row_bytes(formats.from_bits(k), g, 64), formats.row_bytes(formats.from_bits(v), g, 64)


def check_accounting(engine, res, policy):
    """The bytes are exactly the kept entries' rows plus their index; the map says the same."""
    kr, vr = row_bytes(policy)
    kept = res["kept"]
    assert res["layer_bytes"] == [[sum(k) * kr, sum(k) * vr] for k in kept]
    held_scores = "h2o" in policy and policy["h2o"].get("budget") is not None
    entries = sum(map(sum, kept))
    for k, index in zip(kept, res["layer_index_bytes"]):
        # a position per entry once the layer has evicted (none before: entry e is position e),
        # and a held score per entry while H2O accumulates
        evicted = k != [res["tokens_cached"]] * 3
        assert index == 4 * sum(k) * (evicted + held_scores)
    assert res["index_bytes"] == sum(res["layer_index_bytes"])
    assert res["cache_bytes"] == entries * (kr + vr) + res["index_bytes"]
    appended = res["tokens_cached"] * engine.n_layers * engine.store.n_kv_heads
    assert res["eviction"]["evicted"] == appended - entries
    cmap = engine.cache_map()
    for layer, row in enumerate(cmap["layers"]):
        for h in range(3):
            assert [t for t, c in enumerate(row) if int(c, 32) >> h & 1] == cmap["positions"][layer][h]
        assert [len(p) for p in cmap["positions"][layer]] == kept[layer]
    # every factor measured on the store; their product is the total but for the index
    s = res["savings"]
    assert s["total"] == pytest.approx(res["fp32_bytes"] / res["cache_bytes"], rel=1e-4)
    rows = res["cache_bytes"] - res["index_bytes"]
    assert s["eviction"] * s["quantization"] == pytest.approx(s["total"] * res["cache_bytes"] / rows, rel=1e-3)


@pytest.mark.parametrize("name", EVICTING)
@pytest.mark.parametrize("mode", ["ratio", "budget"])
def test_every_eviction_technique(profiled_engine, prompt, name, mode):
    engine, (text, n) = profiled_engine, prompt
    how = {"ratio": 0.5} if mode == "ratio" else {"budget": BUDGET}
    policy = {name: how}
    events = []
    res = run(engine, text, policy, events)
    kept, decoded = res["kept"], NEW - 1
    check_accounting(engine, res, policy)
    keep = n // 2 if mode == "ratio" else BUDGET
    if mode == "budget" and name in ROLLING:
        # the cap holds at every step: no head above it, after the prompt and at every token
        whole = REGISTRY["duo"].retrieval_heads(engine.apply({}).ctx, 9) if name == "duo" else set()
        for ev in events:
            assert max(k for layer, ks in enumerate(ev["kept"]) for h, k in enumerate(ks)
                       if (layer, h) not in whole) <= BUDGET
        if name != "duo":
            assert all(k == [BUDGET] * 3 for k in kept)
            assert len({ev["cache_bytes"] for ev in events}) == 1  # the meter is flat
    elif name in ("pyramidkv", "compresskv"):
        per_layer = [k[0] - decoded for k in kept]
        assert all(k == [k[0]] * 3 for k in kept)  # the same budget for every head of a layer
        if name == "compresskv" or mode == "ratio":
            # budgets vary by layer (kvpress's PyramidKV formula falls back to a uniform budget
            # when its last layer would keep less than the window: here at budget 96)
            assert len(set(per_layer)) > 1
        assert abs(sum(per_layer) - keep * engine.n_layers) <= engine.n_layers  # the same total (rounding)
    elif name == "duo":
        whole = REGISTRY["duo"].retrieval_heads(engine.apply({}).ctx, 9)
        for layer, k in enumerate(kept):
            for h in range(3):
                assert k[h] == (n + decoded if (layer, h) in whole else keep + decoded)
    else:
        assert all(k == [keep + decoded] * 3 for k in kept)
    assert res["eviction"]["technique"] == name and res["eviction"]["selections"] >= 1


def test_streaming_keeps_sinks_and_the_newest(engine, prompt):
    text, n = prompt
    run(engine, text, {"streaming": {"budget": 64, "sinks": 4}})
    total = engine.store.tokens(-1)
    for layer in range(engine.n_layers):
        for h in range(3):
            assert engine.store.positions(layer, h) == [0, 1, 2, 3] + list(range(total - 60, total))


def test_snapkv_keeps_its_window_in_every_head(engine, prompt):
    text, n = prompt
    run(engine, text, {"snapkv": {"ratio": 0.8, "window": 32}})
    for layer in range(engine.n_layers):
        for h in range(3):
            pos = engine.store.positions(layer, h)
            assert set(range(n - 32, n)) <= set(pos) and len(pos) == int(n * 0.2) + NEW - 1


def test_rolling_eviction_shrinks_what_the_model_reads(engine, prompt):
    """Evicted entries leave the staging too: the model's P_i and the working memory fall."""
    text, _ = prompt
    full = run(engine, text, {})
    rolled = run(engine, text, {"h2o": {"budget": 64, "recent": 16}})
    assert rolled["working_bytes"] < full["working_bytes"] / 2
    assert all(engine.store.capacity(i) <= 128 for i in range(engine.n_layers))


@pytest.mark.parametrize("policy", [{"snapkv": {"ratio": 0.5}, "quant": {"k_bits": 4, "v_bits": 4}},
                                    {"h2o": {"budget": BUDGET}, "quant": {"k_bits": 4, "v_bits": 8}}])
def test_eviction_composes_with_quantization(engine, prompt, policy):
    """The savings multiply: kept entries are stored in the chosen formats."""
    res = run(engine, prompt[0], policy)
    check_accounting(engine, res, policy)
    q = policy["quant"]
    assert res["savings"]["quantization"] == pytest.approx(
        2 * 256 / sum(row_bytes(policy)), rel=1e-4), q
    assert res["savings"]["eviction"] > 1.9


def test_eviction_composes_with_aging(engine, prompt):
    """KIVI keys (per channel, blocks of 32) and a k128-style window under rolling H2O: each
    KV head keeps its own entries, the block params stay while a block has an entry, and the
    waiting entries are fp32. The quantization factor is then below q4's 6.4 by exactly what
    the store counts: every head's bytes re-derived from its rows (kv_rows) and the index
    (positions + H2O's scores + one count per block), and the meter's total equal to them."""
    policy = {"h2o": {"budget": BUDGET}, "quant": {"k_bits": 4, "v_bits": 4, "k_axis": "channel", "recent_v": 16}}
    res = run(engine, prompt[0], policy)
    store = engine.store
    rows = sum(len(store.rows(layer, h, p)) for layer in range(engine.n_layers) for h in range(3) for p in (0, 1))
    assert rows + res["index_bytes"] == res["cache_bytes"]
    kept = sum(sum(k) for k in res["kept"])
    # V: q4 rows beyond each head's window of 16, fp32 inside it; K: codes + params + waiting
    v = sum(store.bytes(layer, 1) for layer in range(engine.n_layers))
    assert v == sum(40 * (n - min(16, n)) + 256 * min(16, n) for r in res["kept"] for n in r)
    k = sum(store.bytes(layer, 0) for layer in range(engine.n_layers))
    blocks = (res["index_bytes"] - 8 * kept) // 4  # positions and scores: 4 + 4 per entry
    waiting = k - 256 * blocks - 32 * kept  # each entry still waiting: 256 fp32 bytes instead of 32 of codes
    assert blocks > 0 and waiting >= 0 and waiting % 224 == 0
    # the factor the result reports is these bytes' (short budgets: the fp32 waiting entries weigh)
    assert res["savings"]["quantization"] == pytest.approx(kept * 512 / (k + v), rel=1e-4)
    assert res["savings"]["quantization"] < 6.4 and res["savings"]["eviction"] > 1.9


def test_short_prompts_evict_nothing_and_say_so(engine):
    for policy in ({"snapkv": {"ratio": 0.9}}, {"streaming": {"budget": 256}}, {"knorm": {"budget": 100}}):
        res = run(engine, "A short prompt of a few words.", policy)
        assert res["eviction"]["evicted"] == 0, policy
        assert any("nothing was evicted" in note for note in res["eviction"]["notes"]), policy


@pytest.mark.parametrize("policy, words", [
    ({"snapkv": {"ratio": -0.1}}, "snapkv.ratio must be between"),
    ({"snapkv": {"ratio": 1.0}}, "snapkv.ratio must be in [0, 1)"),
    ({"h2o": {"budget": 0}}, "h2o.budget must be between"),
    ({"streaming": {"budget": 4}}, "streaming.budget must be more than sinks (4)"),
    ({"duo": {"budget": 3, "sinks": 3}}, "duo.budget must be more than sinks"),
    ({"tova": {"budget": 10, "ratio": 0.5}}, "exactly one of ratio"),
    ({"knorm": {}}, "got neither"),
    ({"snapkv": {"ratio": 0.5, "windw": 8}}, "unknown parameter 'windw'"),
    ({"snapkv": {"budget": 16}}, "budget must be at least window (64)"),
    ({"snapkv": {"ratio": 0.5, "kernel": 4}}, "kernel must be odd"),
    ({"pyramidkv": {"ratio": 0.5, "shape": "cone"}}, "pyramidkv.shape must be one of"),
    ({"snapkv": {"ratio": 0.5}, "h2o": {"budget": 64}}, "each choose which entries to keep"),
])
def test_bad_settings_are_refused_and_change_nothing(engine, prompt, policy, words):
    run(engine, prompt[0], {"streaming": {"budget": 64}})
    before = (engine.store.tokens(-1), engine.store.bytes(), engine.store.kept())
    with pytest.raises(PolicyError) as e:
        run(engine, prompt[0], policy)
    assert words in str(e.value)
    assert (engine.store.tokens(-1), engine.store.bytes(), engine.store.kept()) == before


def test_profile_techniques_need_a_profile(host):
    bare = Engine(host)  # no profile given
    for policy in ({"compresskv": {"ratio": 0.5}}, {"duo": {"budget": 64}},
                   {"pyramidkv": {"ratio": 0.5, "shape": "entropy"}}):
        with pytest.raises(PolicyError, match="needs the head profile"):
            bare.generate(Request(prompt="hello there", max_new_tokens=2, policy=policy))
    bare.generate(Request(prompt="hello there", max_new_tokens=2, policy={"pyramidkv": {"ratio": 0.5}}))


def test_cli_bad_eviction_settings_exit_2(bundle):
    for pol in ('{"snapkv": {"ratio": 1.5}}', '{"streaming": {"budget": 2}}', '{"h2o": {}}'):
        r = subprocess.run([sys.executable, "-m", "kvlab", "--artifacts", str(bundle), "generate", "--prompt", "hi",
                            "--policy", pol], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and not r.stdout


def test_cli_cachemap(bundle, prompt):
    r = subprocess.run([sys.executable, "-m", "kvlab", "--artifacts", str(bundle), "cachemap", "--prompt", prompt[0],
                        "--policy", '{"streaming": {"budget": 40, "sinks": 4}}', "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    n = prompt[1]
    assert out["tokens"] == n and len(out["layers"]) == 30 and out["kept"] == [[40] * 3] * 30
    assert out["positions"][7][1] == [0, 1, 2, 3] + list(range(n - 36, n))
    assert out["layers"][0] == "7777" + "0" * (n - 40) + "7" * 36
