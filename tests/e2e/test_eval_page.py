"""kvlab.evaluate in the page: the quality harness on the browser host agrees with the native host.

The page runs onnxruntime-web, not onnxruntime: the logits differ in the last bits. With
the full cache that is all (perplexities agree to a few parts per million); a quantized
cache amplifies it, because a value within rounding noise of a grid step's midpoint lands
on different steps on the two hosts, so its numbers are compared within measured
tolerances. Greedy answers, the store's bytes and the texts read are the same exactly.
"""

from __future__ import annotations

import pytest

from kvlab.evaluate import evaluate

Q4 = {"quant": {"k_bits": 4, "v_bits": 4}}
PPL = {"task": "ppl", "context": 128, "positions": 16, "policy": Q4}

# Tolerances, relative, measured page vs native on ppl (context 128, 16 positions) over
# seeds 0-5 × {q4/q4, q8/q8, k4/v8}: full-cache perplexity ≤ 3.3e-6; compressed perplexity
# ≤ 3.0e-2 (1.1e-2 for the call below); mean KL ≤ 1.6e-1 for q4/q4, 2.6e-1 for k4/v8
# (2.1e-2 for the call below: the KL is a small difference of two near distributions, so
# the grid flips move it most).
REL_FULL = 1e-4
REL_SCORE = 0.05
REL_KL = 0.2

#: the same on both hosts, to the byte
EXACT = ("task", "policy", "positions", "context", "seed", "tokens_cached", "cache_bytes", "fp32_bytes",
         "fp16_bytes", "ratio_vs_fp32", "ratio_vs_fp16", "texts", "texts_source", "score_kind")


def page_evaluate(browser, opts: dict) -> dict:
    """window.kvlab.evaluate(opts) → the result, or {"error", "kind"} if it rejected."""
    res = browser.page.evaluate(
        "opts => kvlab.evaluate(opts).catch(e => ({error: e.message, kind: e.kind}))", opts
    )
    return res


def test_ppl_in_the_page_equals_native(browser, engine):
    web = page_evaluate(browser, PPL)
    assert "error" not in web, web
    native = evaluate(engine, "ppl", Q4, context=128, positions=16)
    print({k: (web[k], native[k]) for k in ("score", "score_full", "kld_vs_full", "top1_agreement", "seconds")})
    assert web["host"] == "browser" and native["host"] == "native"
    assert set(web) == set(native)
    for key in EXACT:
        assert web[key] == native[key], key
    assert web["score_full"] == pytest.approx(native["score_full"], rel=REL_FULL)
    assert web["score"] == pytest.approx(native["score"], rel=REL_SCORE)
    assert web["kld_vs_full"] == pytest.approx(native["kld_vs_full"], rel=REL_KL)
    assert web["kld_vs_full"] > 0  # the 4-bit cache is measurably not the full cache here too
    # one flipped argmax of 16 moves the agreement by 1/16: allow one
    assert abs(web["top1_agreement"] - native["top1_agreement"]) <= 1 / 16 + 1e-9


def test_multi_hop_in_the_page_gives_the_native_answers(browser, engine):
    """Both hops, greedy, through a 4-bit cache: the same digits on both hosts."""
    web = page_evaluate(browser, {"task": "multi-hop", "context": 256, "n": 2, "policy": Q4})
    assert "error" not in web, web
    native = evaluate(engine, "multi-hop", Q4, context=256, n=2)
    for key in EXACT + ("questions", "score", "score_full", "crossovers", "misses", "top1_agreement"):
        assert web[key] == native[key], key
    assert web["kld_vs_full"] == pytest.approx(native["kld_vs_full"], rel=REL_KL)
    assert all(q["named"] and q["answer"] for q in web["questions"])


def test_needle_with_the_question_after_compression_in_the_page(browser, engine):
    """kvpress's order (compress the prompt, then read the question) on both hosts alike."""
    pol = {"snapkv": {"ratio": 0.5}}
    web = page_evaluate(browser, {"task": "needle", "context": 256, "n": 2, "policy": pol, "question": "after"})
    assert "error" not in web, web
    native = evaluate(engine, "needle", pol, context=256, n=2, question="after")
    assert web["question"] == native["question"] == "after"
    for key in EXACT + ("questions", "score", "score_full", "kept"):
        assert web[key] == native[key], key


@pytest.mark.parametrize("opts, words", [
    ({"task": "needle", "question": "during"}, "question must be one of"),
    ({"task": "ppl", "colour": "red"}, "unknown option 'colour'"),
    ({"task": "sudoku"}, "unknown task 'sudoku'"),
    ({"task": "ppl", "context": 9000}, "leaves no room"),
    ({"task": "needle", "policy": {"quant": {"k_bits": 5}}}, "quant.k_bits must be one of"),
    ({}, "'task' is required"),
], ids=["bad-question", "unknown-option", "unknown-task", "context-too-long", "bad-policy", "no-task"])
def test_bad_options_reject_clearly(browser, opts, words):
    res = browser.page.evaluate("opts => kvlab.evaluate(opts).catch(e => ({error: e.message, kind: e.kind}))", opts)
    assert words in res.get("error", ""), res
    assert res["kind"] == "input"
    assert browser.page.evaluate("kvlab.busy") is False  # and the page stays usable
    ok = browser.generate(prompt="Hello", maxNewTokens=2)
    assert "error" not in ok, ok
