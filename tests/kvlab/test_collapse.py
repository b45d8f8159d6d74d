"""collapse (seed 000): the most collapsed KV heads' keys as one mean pre-RoPE key plus a
residual, through the engine on the real model (the store's kernels: tests/wasm/test_wasm_collapse.py)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from kvlab import formats
from kvlab.engine import Request
from kvlab.evaluate import evaluate
from kvlab.policy import Applied, Context, parse_policy
from kvlab.techniques import PolicyError

PROMPT = "Collapsed heads look at the same places whatever they read, so one mean key nearly says it all."


def top(profile, n: int) -> list[tuple[int, int]]:
    return [(c["layer"], c["kv_head"]) for c in profile["candidates"]["collapsed_keys"][:n]]


def test_the_chosen_heads_hold_a_residual_and_their_mean(profiled_engine):
    """heads 3 at 8 bits under q4 values elsewhere: those heads' K in q8 (their V as quant
    left it), the mean the profile's, collapsed in the meter; the bytes are the rows plus
    one fp32 mean per collapsed head."""
    e = profiled_engine
    pol = {"quant": {"k_bits": 4, "v_bits": 4}, "collapse": {"heads": 3, "bits": 8}}
    res = e.generate(Request(prompt=PROMPT, max_new_tokens=4, ignore_eos=True, policy=pol))
    chosen = top(e.profile, 3)
    store, n = e.store, res["tokens_cached"]
    for layer, k in itertools.product(range(30), range(3)):
        want = formats.Q8 if (layer, k) in chosen else formats.Q4
        assert (store.head_format(layer, k, 0), store.head_format(layer, k, 1)) == (want, formats.Q4)
        assert res["head_collapsed"][layer][k] == int((layer, k) in chosen)
        assert res["head_bits"][layer][k][0] == (8 if (layer, k) in chosen else 4)
    for layer, k in chosen:
        np.testing.assert_allclose(store.collapse_mean(layer, k), e.profile["key_means"]["values"][layer][k],
                                   rtol=1e-6, atol=1e-6)
    row = lambda f: formats.row_bytes(f, 32, 64)  # noqa: E731
    assert res["cache_bytes"] == n * (87 * row(formats.Q4) + 3 * row(formats.Q8) + 90 * row(formats.Q4)) + 3 * 4 * 64


def test_the_mean_alone_costs_the_top_head_little_and_twenty_heads_much(profiled_engine):
    """Seed 000's claim, on this model (it can fail): the most collapsed head as its mean
    alone barely moves the predictions; twenty heads so do; an exact (f16) residual gives
    the full cache's predictions back (the RoPE turn is the graph's own)."""
    e = profiled_engine
    ref: dict = {}
    run = lambda pol: evaluate(e, "ppl", pol, context=256, positions=64, reference=ref)  # noqa: E731
    exact = run({"collapse": {"heads": 1, "bits": 16}})
    one = run({"collapse": {"heads": 1, "bits": 0}})
    twenty = run({"collapse": {"heads": 20, "bits": 0}})
    prompt = run({"collapse": {"heads": 1, "bits": 0, "mean": "prompt"}})
    assert exact["kld_vs_full"] < 1e-4 and exact["top1_agreement"] == 1.0
    assert one["kld_vs_full"] < 0.03 and prompt["kld_vs_full"] < 0.03
    assert twenty["kld_vs_full"] > 5 * one["kld_vs_full"]
    # the bytes: one head's keys gone but for its mean
    n = one["tokens_cached"]
    assert one["fp32_bytes"] - one["cache_bytes"] == n * 64 * 4 - 64 * 4


def test_a_given_list_and_the_prompts_mean(profiled_engine):
    e = profiled_engine
    e.generate(Request(prompt=PROMPT, max_new_tokens=2, ignore_eos=True,
                       policy={"collapse": {"list": [[0, 1], [29, 2]], "bits": 0, "mean": "prompt"}}))
    s = e.store
    assert [(layer, k) for layer in range(30) for k in range(3) if s.collapsed(layer, k)] == [(0, 1), (29, 2)]
    assert s.collapsed(0, 1) == 3 and s.head_format(0, 1, 0) == formats.NONE  # its first run's mean, taken
    assert s.bytes(0, 0) == 4 * 64 + 2 * s.tokens(0) * 64 * 4  # the mean + two f32 heads
    mu = np.asarray(s.collapse_mean(0, 1))
    assert np.abs(mu).max() > 0 and not np.allclose(mu, e.profile["key_means"]["values"][0][1], atol=1e-3)


def test_bad_settings_are_refused(profiled_engine):
    model, prof = profiled_engine.config, profiled_engine.profile
    for pol, msg in [({}, "exactly one of heads"), ({"heads": 2, "list": [[0, 0]]}, "exactly one of heads"),
                     ({"list": []}, "list of \\[layer, kv_head\\] pairs"), ({"list": [[0]]}, "pairs"),
                     ({"list": [[0, 0], [0, 0]]}, "names a head twice"), ({"list": [[0, -1]]}, "pairs"),
                     ({"heads": 0}, "between 1"), ({"heads": 1, "bits": 5}, "bits must be one of"),
                     ({"heads": 1, "mean": "texts"}, "mean must be one of")]:
        with pytest.raises(PolicyError, match=msg):
            parse_policy({"collapse": pol})
    with pytest.raises(PolicyError, match="KIVI"):
        parse_policy({"collapse": {"heads": 1}, "quant": {"k_bits": 4, "k_axis": "channel"}})
    with pytest.raises(PolicyError, match=r"\[30, 0\], which does not exist"):
        Applied(parse_policy({"collapse": {"list": [[30, 0]]}}), Context(model, prof))
    with pytest.raises(PolicyError, match=r"\[0, 3\], which does not exist"):
        Applied(parse_policy({"collapse": {"list": [[0, 3]], "mean": "prompt"}}), Context(model, prof))
    with pytest.raises(PolicyError, match="at most 90"):
        Applied(parse_policy({"collapse": {"heads": 91}}), Context(model, prof))
    with pytest.raises(PolicyError, match="needs the head profile"):
        Applied(parse_policy({"collapse": {"heads": 1}}), Context(model, None))
    with pytest.raises(PolicyError, match="key_means"):
        Applied(parse_policy({"collapse": {"list": [[0, 0]]}}), Context(model, None))
    other = dict(prof, key_means={"values": [[[0.0] * 32] * 3] * 30})  # another model's head_dim
    with pytest.raises(PolicyError, match="another model"):
        Applied(parse_policy({"collapse": {"list": [[0, 0]]}}), Context(model, other))
    with pytest.raises(PolicyError, match="must be one of"):
        parse_policy({"quant": {"k_format": "none"}})  # a format only collapse uses
    # without a profile a list on the prompt's mean needs nothing else
    Applied(parse_policy({"collapse": {"list": [[0, 0]], "mean": "prompt"}}), Context(model, None))


def test_cli_says_what_is_wrong_and_exits_2(bundle):
    r = subprocess.run([sys.executable, "-m", "kvlab", "--artifacts", str(bundle), "generate", "--prompt", "hi",
                        "--max-new-tokens", "1",
                        "--policy", json.dumps({"collapse": {"list": [[0, 9]], "mean": "prompt"}})],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "which does not exist" in r.stderr, r.stderr
