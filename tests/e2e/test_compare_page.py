"""The compare panel, driven as a person drives it (the Prompt card, two policies, Compare):
both sides and the KL strip are drawn, and every number equals the native ``compare``.
A policy that is not JSON, or that the engine refuses, shows its words and loses nothing."""

from __future__ import annotations

import json

import pytest

from kvlab.compare import compare
from kvlab.engine import Request

PROMPT = "Name three colours of the rainbow."
N = 12
# rolling eviction: B's text parts from A's within a few tokens, and its kept entries are exact
# (2-bit keys would also part, but flip near-ties between the hosts' float kernels)
B = {"streaming": {"budget": 16}}
RUN_TIMEOUT_MS = 300_000


@pytest.fixture
def page(browser):
    p = browser.page
    p.fill("#prompt", PROMPT)
    p.check("#chat")
    p.fill("#max-new-tokens", str(N))
    p.fill("#temperature", "0")
    yield p


def run_compare(page, a: str, b: str) -> None:
    done = page.evaluate("Number(document.getElementById('compare').dataset.done || 0)")
    page.fill("#compare-policy-a", a)
    page.fill("#compare-policy-b", b)
    page.click("#compare-run")
    page.wait_for_function(f"Number(document.getElementById('compare').dataset.done || 0) > {done} || "
                           "document.querySelector('#compare-status.error')", timeout=RUN_TIMEOUT_MS, polling=200)


def test_compare_renders_both_sides_as_native(page, engine, browser):
    run_compare(page, "{}", json.dumps(B))
    assert page.evaluate("document.querySelector('#compare-status.error')") is None
    native = compare(engine, Request(prompt=PROMPT, chat=True, max_new_tokens=N), {}, B)
    web = page.evaluate("""() => [...document.querySelectorAll('.compare-side')].map(s => ({
        ids: s.dataset.ids.split(',').map(Number), bytes: Number(s.dataset.cacheBytes),
        text: s.querySelector('[data-role=text]').textContent, diverge: s.querySelectorAll('.tok.diverge').length}))""")
    for shown, side in zip(web, ("a", "b")):
        assert shown["ids"] == native[side]["ids"], side
        assert shown["bytes"] == native[side]["cache_bytes"], side
        assert shown["text"] == native[side]["text"], side  # the streamed pieces make the whole text
        assert shown["diverge"] == (0 if native["first_divergence"] is None else 1)
    assert page.evaluate("Number(document.getElementById('compare-strip').dataset.positions)") == len(native["kld"])
    # the page's object is the native one: KL and top-1 per position, equal to float32 noise
    res = page.evaluate(f"kvlab.compare({json.dumps({'prompt': PROMPT, 'chat': True, 'maxNewTokens': N, 'policyB': B})})")
    assert res["top1"] == native["top1"] and res["first_divergence"] == native["first_divergence"]
    assert res["kld"] == pytest.approx(native["kld"], rel=2e-2, abs=1e-4)
    assert set(res) == set(native)
    summary = page.text_content("#compare-summary")
    assert "KL(A‖B)" in summary and f"over {N} positions" in summary
    assert browser.blocked == []


@pytest.mark.parametrize("b, words", [
    ("{quant", "policy B is not a policy object"),
    ('{"quant": {"k_bits": 5}}', "policy B: quant.k_bits must be one of"),
])
def test_a_bad_policy_is_refused_in_words(page, b, words):
    """The message names the side; the last comparison's texts stay on the panel."""
    before = page.evaluate("document.querySelector('.compare-side[data-side=a] [data-role=text]').textContent")
    page.fill("#compare-policy-a", "{}")
    page.fill("#compare-policy-b", b)
    page.click("#compare-run")
    page.wait_for_function("document.querySelector('#compare-status.error')", timeout=RUN_TIMEOUT_MS)
    assert words in page.text_content("#compare-status")
    assert page.evaluate("document.querySelector('.compare-side[data-side=a] [data-role=text]').textContent") == before
    assert not page.evaluate("kvlab.busy")
