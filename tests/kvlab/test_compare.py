"""kvlab.compare: one prompt under two policies, and B teacher-forced on A's tokens.

Checked against things compare does not compute itself: each side equals a plain
``generate`` of its policy (ids, text, bytes), and the per-position KL and top-1 equal NumPy's
on logits read from fresh passes (the prompt under the policy, then A's tokens one by one).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kvlab.compare import MAX_NEW_TOKENS, compare
from kvlab.engine import InputError, Request
from kvlab.techniques import PolicyError

PROMPT = "The three primary colours are"
Q2 = {"quant": {"k_bits": 2, "v_bits": 2}}
N = 12


def req(**kw) -> Request:
    return Request(prompt=PROMPT, max_new_tokens=N, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def q2_run(engine):
    return compare(engine, req(), {}, Q2)


def logits_after(engine, policy, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """The logits after the prompt and then `tokens` one run each, under `policy`: (vocab,)."""
    store, vocab = engine.store, engine.config["vocab"]
    pol = engine.apply(policy)
    store.reset()
    pol.configure(store)
    ptr = engine.feed(prompt, 0, pol, "prompt")
    for i, t in enumerate(tokens):
        ptr = engine.feed([t], len(prompt) + i, pol, "decode")
    return np.frombuffer(store.module.read(ptr, 4 * vocab), dtype="<f4").astype(np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_each_side_is_its_policys_generation(engine, q2_run):
    for side, pol in (("a", {}), ("b", Q2)):
        alone = engine.generate(req(policy=pol))
        got = q2_run[side]
        assert got["ids"] == alone["ids"] and got["text"] == alone["text"], side
        assert got["cache_bytes"] == alone["cache_bytes"] and got["tokens_cached"] == alone["tokens_cached"], side
    assert q2_run["prompt_ids"] == alone["prompt_ids"]
    assert q2_run["ratios"]["cache_bytes"] == pytest.approx(q2_run["a"]["cache_bytes"] / q2_run["b"]["cache_bytes"],
                                                            rel=1e-4)


def test_kl_and_top1_per_position_equal_numpy(engine, q2_run):
    """At A's positions 0, 5 and the last: KL(A‖B) and top-1 from fresh passes in NumPy."""
    a_ids, prompt = q2_run["a"]["ids"], q2_run["prompt_ids"]
    assert len(q2_run["kld"]) == len(q2_run["top1"]) == len(a_ids) == N
    for j in (0, 5, N - 1):
        pa = log_softmax(logits_after(engine, {}, prompt, a_ids[:j]))
        pb = log_softmax(logits_after(engine, Q2, prompt, a_ids[:j]))
        kl = float(np.sum(np.exp(pa) * (pa - pb)))
        assert q2_run["kld"][j] == pytest.approx(kl, rel=1e-3, abs=1e-5), j
        assert q2_run["top1"][j] == int(pa.argmax() == pb.argmax()), j
    assert q2_run["kld_mean"] == pytest.approx(sum(q2_run["kld"]) / N, abs=1e-6)
    assert max(q2_run["kld"]) > 0.01  # 2-bit keys and values move the distribution


def test_the_first_divergence(engine, q2_run):
    a, b = q2_run["a"]["ids"], q2_run["b"]["ids"]
    d = q2_run["first_divergence"]
    if d is None:
        assert a == b
    else:
        assert a[:d] == b[:d] and a[d] != b[d]
        assert q2_run["top1"][:d] == [1] * d  # the same tokens so far: both chose A's each time


def test_a_policy_against_itself(engine):
    """Same policy both sides: the same text, KL 0 and top-1 1 at every position."""
    res = compare(engine, req(), Q2, Q2)
    assert res["a"]["ids"] == res["b"]["ids"] and res["first_divergence"] is None
    assert max(res["kld"]) < 1e-6 and res["top1"] == [1] * N
    assert res["ratios"]["cache_bytes"] == 1.0 and res["stopped"] is False


@pytest.mark.parametrize("kw, a, b, err, words", [
    ({}, {}, {"quant": {"k_bits": 5}}, PolicyError, "policy B: quant.k_bits"),
    ({}, {"nope": {}}, {}, PolicyError, "policy A: unknown technique"),
    ({"max_new_tokens": MAX_NEW_TOKENS + 1}, {}, {}, InputError, f"at most {MAX_NEW_TOKENS} tokens"),
    ({"prompt": "  "}, {}, Q2, InputError, "^the prompt is empty"),
])
def test_bad_input_runs_nothing(engine, kw, a, b, err, words):
    """Refused before the store is touched: the cache of the last run stays as it was."""
    engine.generate(req())
    before = engine.meter()
    with pytest.raises(err, match=words):
        compare(engine, Request(**({"prompt": PROMPT, "max_new_tokens": N} | kw)), a, b)
    assert engine.meter() == before


def test_cli_prints_the_same_object(bundle, engine, q2_run):
    p = subprocess.run([sys.executable, "-m", "kvlab", "--artifacts", str(bundle), "compare", "--prompt", PROMPT,
                        "--max-new-tokens", str(N), "--ignore-eos", "--policy-b", json.dumps(Q2), "--json"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert set(got) == set(q2_run)
    for key in ("prompt_ids", "kld", "top1", "first_divergence", "kld_mean", "top1_agreement"):
        assert got[key] == q2_run[key], key
    assert got["b"]["ids"] == q2_run["b"]["ids"] and got["b"]["cache_bytes"] == q2_run["b"]["cache_bytes"]
    bad = subprocess.run([sys.executable, "-m", "kvlab", "compare", "--prompt", PROMPT, "--policy-b", '{"quant": 1}'],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "policy B:" in bad.stderr
