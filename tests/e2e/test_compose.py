"""Composing techniques on the page: the panel says at once whether its techniques combine
(the engine's own check, nothing run), and the meter breaks a composed run's saving into its
measured factors."""

from __future__ import annotations

import pytest

from kvlab.engine import Request
from kvlab.texts import token_stream


@pytest.mark.parametrize("policy, words", [
    ({"entropy_bits": {"bits": 3}, "quant": {"k_bits": 4}}, "entropy_bits chooses each KV head's formats itself"),
    ({"snapkv": {"ratio": 0.5}, "h2o": {"budget": 64}}, "h2o and snapkv each choose which entries to keep"),
])
def test_two_that_cannot_combine_are_named(browser, policy, words):
    err = browser.page.evaluate("p => kvlab.checkPolicy(p).then(() => null, e => e.message)", policy)
    assert err is not None and words in err


def test_the_panel_says_when_techniques_compose(browser):
    page = browser.page
    quant = "#techniques fieldset[data-technique=quant] [data-toggle]"
    stream = "#techniques fieldset[data-technique=streaming] [data-toggle]"
    page.check(quant)
    page.check(stream)
    page.wait_for_function("document.getElementById('policy-check').textContent.includes('compose')")
    assert "quant × streaming" in page.text_content("#policy-check")
    page.uncheck(quant)
    page.uncheck(stream)
    page.wait_for_function("document.getElementById('policy-check').textContent === 'the full fp32 cache'")


def test_the_meter_breaks_the_saving_into_measured_factors(browser, engine):
    ids, _ = token_stream(engine.tokenizer, 300)
    prompt = engine.tokenizer.decode(ids)
    policy = {"quant": {"k_bits": 4, "v_bits": 4}, "streaming": {"budget": 128}}
    web = browser.page.evaluate("o => kvlab.generate(o)", {"prompt": prompt, "maxNewTokens": 4, "policy": policy})
    native = engine.generate(Request(prompt=prompt, max_new_tokens=4, policy=policy))
    assert web["savings"] == native["savings"] and web["cache_bytes"] == native["cache_bytes"]
    s = native["savings"]
    text = browser.page.text_content("#meter-savings")
    total = native["fp32_bytes"] / native["cache_bytes"]
    for x in (s["eviction"], s["quantization"], total):
        assert f"{x:.2f}" in text or f"{x:.1f}" in text, (x, text)
    assert "in all" in text
