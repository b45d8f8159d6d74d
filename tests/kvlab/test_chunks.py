"""chunks (seed 004) and importance through the engine: the summary entries are the NumPy
mean of the chunk's staged K/V, the bytes are the formula, bad settings are refused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kvlab.evaluate import _Pass
from kvlab.techniques import PolicyError
from kvlab.texts import token_stream

QUESTION = 12  # the prompt's last tokens read apart as its question
SMALL = {"chunk": 16, "k": 2, "recent": 32, "sinks": 4}


@pytest.fixture(scope="module")
def ids(engine):
    got, _ = token_stream(engine.tokenizer, 240, start=7)
    return got


def read(engine, policy, ids):
    """The prompt read under policy, its question apart: the pass (store holds its cache)."""
    p = _Pass(engine, policy)
    engine.drive(p.feed(ids, "prompt", question=QUESTION))
    return p


def rows(store, layer, head, part):
    """(entries, D) f32 of a head's fp32 rows."""
    return np.frombuffer(store.rows(layer, head, part), np.float32)[: store.live(layer, head) * store.head_dim] \
        .reshape(-1, store.head_dim)


def test_summary_entries_are_the_mean_of_the_staged_rows(profiled_engine, ids):
    engine, store = profiled_engine, profiled_engine.store
    read(engine, {}, ids)
    full = {(l, h, part): rows(store, l, h, part).copy()
            for l in range(store.n_layers) for h in range(store.n_kv_heads) for part in (0, 1)}
    p = read(engine, {"chunks": SMALL}, ids)
    rep = p.pol.report["chunks"]
    n, n_ctx = len(ids), len(ids) - QUESTION
    assert rep["context"] == n_ctx and len(rep["routed"]) == 2
    spans = rep["summarized"]
    cut = [(lo, min(lo + 16, n_ctx - 32)) for lo in range(4, n_ctx - 32, 16)]
    assert sorted([tuple(s[:2]) for s in spans] + [tuple(r) for r in rep["routed"]]) == cut
    for lo, hi, at in spans:
        assert at == lo + (hi - lo) // 2
    want_pos = sorted(set(range(n)) - {t for lo, hi, _ in spans for t in range(lo, hi)} | {at for *_, at in spans})
    for layer in range(store.n_layers):
        for h in range(store.n_kv_heads):
            pos = store.positions(layer, h)
            assert pos == want_pos
            for part in (0, 1):
                got, ref = rows(store, layer, h, part), full[(layer, h, part)]
                for lo, hi, at in spans:
                    np.testing.assert_allclose(got[pos.index(at)], ref[lo:hi].mean(0), rtol=1e-4, atol=1e-5)
                exact = [i for i, t in enumerate(pos) if t not in {s[2] for s in spans}]
                np.testing.assert_allclose(got[exact], ref[[pos[i] for i in exact]], rtol=1e-4, atol=1e-5)
    # the bytes are the formula: every entry's K and V rows in fp32, and a position per entry
    entries = sum(store.live(l, h) for l in range(store.n_layers) for h in range(store.n_kv_heads))
    assert entries == store.n_layers * store.n_kv_heads * len(want_pos)
    assert store.bytes(-1, 2) == 4 * entries
    assert store.bytes() == entries * 2 * store.head_dim * 4 + 4 * entries
    assert rep["evicted"] == store.n_layers * store.n_kv_heads * (n - len(want_pos))


def test_zero_key_summaries_and_dropped_chunks(profiled_engine, ids):
    engine, store = profiled_engine, profiled_engine.store
    read(engine, {}, ids)
    v_full = rows(store, 3, 1, 1).copy()
    p = read(engine, {"chunks": SMALL | {"summary": "zero_key"}}, ids)
    pos = store.positions(3, 1)
    for lo, hi, at in p.pol.report["chunks"]["summarized"]:
        assert not rows(store, 3, 1, 0)[pos.index(at)].any()  # a zero key: every query's logit 0
        np.testing.assert_allclose(rows(store, 3, 1, 1)[pos.index(at)], v_full[lo:hi].mean(0), rtol=1e-4, atol=1e-5)
    p = read(engine, {"chunks": SMALL | {"summaries": False}}, ids)
    rep = p.pol.report["chunks"]
    assert rep["summarized"] == [] and rep["evicted"] > 0
    routed = {t for lo, hi in rep["routed"] for t in range(lo, hi)}
    gone = set(range(4, len(ids) - QUESTION - 32)) - routed  # the chunks not routed: gaps
    for layer in range(store.n_layers):
        pos = store.positions(layer, 0)
        assert routed <= set(pos) and set(range(len(ids) - QUESTION - 32, len(ids))) <= set(pos) and not gone & set(pos)
        assert len(pos) == 4 + 2 * 16 + 32 + QUESTION


def test_summaries_compose_with_quant(profiled_engine, ids):
    engine, store = profiled_engine, profiled_engine.store
    read(engine, {"chunks": SMALL}, ids)
    plain = store.bytes()
    read(engine, {"chunks": SMALL, "quant": {"k_bits": 8, "v_bits": 8}}, ids)
    entries = sum(store.live(l, h) for l in range(store.n_layers) for h in range(store.n_kv_heads))
    assert store.bytes() == entries * 2 * (store.head_dim // 32) * 34 + 4 * entries < plain


@pytest.mark.parametrize("settings, words", [
    ({"chunk": 0}, "chunks.chunk must be between 1"),
    ({"k": -1}, "chunks.k must be between 0"),
    ({"route_by": "answer"}, "chunks.route_by must be one of"),
    ({"summaries": False, "summary": "zero"}, "needs summaries true"),
])
def test_bad_settings_are_refused(profiled_engine, ids, settings, words):
    with pytest.raises(PolicyError, match=words):
        profiled_engine.apply({"chunks": settings})


def test_retrieval_heads_need_the_profile(host):
    from kvlab.engine import Engine

    with pytest.raises(PolicyError, match="needs the head profile"):
        Engine(host).apply({"chunks": {}})
    Engine(host).apply({"chunks": {"heads": "all"}})


def test_more_chunks_than_exist_keep_them_all_with_a_note(profiled_engine, ids):
    p = read(profiled_engine, {"chunks": SMALL | {"k": 99}}, ids)
    rep = p.pol.report["chunks"]
    assert rep["summarized"] == [] and "keeps them all exact" in rep["notes"][0]
    assert profiled_engine.store.tokens(-1) == len(ids) == len(profiled_engine.store.positions(0, 0))


def test_routing_finds_the_asked_fact(profiled_engine):
    """Through the retrieval heads the question routes the asked fact's chunk (k = 1)."""
    from kvlab.evaluate import evaluate

    res = evaluate(profiled_engine, "multi-needle", {"chunks": {"k": 1, "recent": 128}}, context=768, n=2)
    assert res["routing_accuracy"] == 1.0 and all(q["routed"] for q in res["questions"])


def test_importance_keeps_the_question_and_its_budget(profiled_engine, ids):
    engine, store = profiled_engine, profiled_engine.store
    for signal in ("sum", "max", "tail", "question"):
        read(engine, {"importance": {"signal": signal, "budget": 80}}, ids)
        for layer in range(store.n_layers):
            for h in range(store.n_kv_heads):
                pos = store.positions(layer, h)
                assert len(pos) == 80 and set(range(len(ids) - QUESTION - 32, len(ids))) <= set(pos)


def test_cli_bad_chunk_settings_exit_2(bundle):
    for pol in ('{"chunks": {"chunk": 0}}', '{"chunks": {"k": -2}}'):
        r = subprocess.run([sys.executable, "-m", "kvlab", "--artifacts", str(bundle), "generate", "--prompt", "hi",
                            "--policy", pol], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "chunks." in r.stderr and not r.stdout
