"""The demo page driven as a person drives it: type, click, read the meter.

Uses the shared booted page of conftest.py. Every wait is on a condition (a run's
``kvlab:done`` caught by the page, the Generate button enabled again), never a sleep.
Each test leaves the page idle, so the order does not matter.
"""

from __future__ import annotations

import json

import pytest

RUN_TIMEOUT_MS = 180_000
N_LAYERS = 30


# ---- helpers ------------------------------------------------------------------------------

@pytest.fixture
def page(browser):
    """The shared page, idle, with the full cache selected and no message showing."""
    p = browser.page
    wait_idle(p)
    set_quant(p, None)
    return p


def wait_idle(page):
    page.wait_for_function(
        "document.body.dataset.state === 'ready' && !document.body.classList.contains('generating')"
        " && !document.querySelector('#generate').disabled",
        timeout=RUN_TIMEOUT_MS, polling=100,
    )


def set_quant(page, bits):
    """Through the technique panel: None = off (the full cache), else (k_bits, v_bits)."""
    toggle = page.locator("#tech-quant")
    if bits is None:
        toggle.uncheck()
        return
    toggle.check()
    page.select_option("#tech-quant-k_bits", str(bits[0]))
    page.select_option("#tech-quant-v_bits", str(bits[1]))


def catch_done(page):
    """From now on, the next kvlab:done's result lands in window.__uiDone."""
    page.evaluate("""() => {
        window.__uiDone = null;
        window.addEventListener('kvlab:done', (e) => { window.__uiDone = e.detail; }, { once: true });
    }""")


def generate(page, prompt, max_new=6, chat=False):
    """Fill the form, click Generate; the run's result, once the page is idle again."""
    page.fill("#prompt", prompt)
    page.locator("#chat").set_checked(chat)
    page.fill("#max-new-tokens", str(max_new))
    catch_done(page)
    page.click("#generate")
    page.wait_for_function("window.__uiDone !== null", timeout=RUN_TIMEOUT_MS, polling="raf")
    wait_idle(page)
    return page.evaluate("window.__uiDone")


def meter(page):
    return page.evaluate("""() => ({
        total: +document.querySelector('#meter-total').dataset.bytes,
        fp32: +document.querySelector('#meter-fp32').dataset.bytes,
        fp16: +document.querySelector('#meter-fp16').dataset.bytes,
        layers: [...document.querySelectorAll('#layer-bars > [data-layer]')].map((b) =>
            [+b.dataset.layer, +b.dataset.kBytes, +b.dataset.vBytes]),
        text: document.querySelector('#meter-total').textContent,
    })""")


def message(page):
    return page.evaluate("""() => { const m = document.querySelector('#message');
        return { hidden: m.hidden, text: m.textContent, error: m.classList.contains('error') }; }""")


# ---- the page after start-up ----------------------------------------------------------------

def test_ready_page_shows_runtime_and_registry(page):
    assert page.evaluate("document.querySelector('#boot').classList.contains('done')")
    assert "SIMD" in page.text_content("#rt-store")
    assert page.text_content("#rt-coi") == "cross-origin isolated"
    # one fieldset per registered technique, one control per parameter, help as captions
    techniques = page.evaluate("kvlab.info.techniques")
    fieldsets = page.evaluate("[...document.querySelectorAll('#techniques fieldset')].map(f => f.dataset.technique)")
    assert fieldsets == [t["name"] for t in techniques]
    for t in techniques:
        for p in t["params"]:
            assert page.locator(f"#tech-{t['name']}-{p['name']}").count() == 1
    assert page.locator("#layer-bars > [data-layer]").count() == N_LAYERS
    for sel in ("#generate", "#reset"):
        assert page.is_enabled(sel)
    assert page.is_disabled("#stop")


# ---- generate: text, meter, bars, chart -----------------------------------------------------

def test_generate_streams_text_and_fills_the_meter(page):
    res = generate(page, "The capital of France is", max_new=6)
    assert res["ids"] and res["cache_bytes"] > 0
    m = meter(page)
    assert m["total"] == res["cache_bytes"] > 0
    assert m["fp32"] == res["fp32_bytes"] and m["fp16"] == res["fp16_bytes"]
    assert m["total"] == m["fp32"]  # the full cache holds exactly fp32
    assert [layer for layer, _, _ in m["layers"]] == list(range(N_LAYERS))
    assert [[k, v] for _, k, v in m["layers"]] == res["layer_bytes"]
    assert all(k > 0 and v > 0 for _, k, v in m["layers"])
    # the prompt shown apart from the generated text, which is the result's
    assert page.text_content("#output .prompt-text") == "The capital of France is"
    assert page.text_content("#output .gen") == res["text"]
    # the chart: a uPlot canvas with one point per token (plus the origin)
    assert page.locator("#chart canvas").count() >= 1
    page.wait_for_function("+document.querySelector('#chart').dataset.points >= 2", timeout=5_000)
    assert page.text_content("#stat-tokens") == f"{res['tokens_cached']:,}"
    assert page.text_content("#stat-tps") not in ("", "—")


def test_quant_4_4_holds_fewer_bytes_per_token(page):
    full = generate(page, "Water boils at", max_new=4)
    set_quant(page, (4, 4))
    assert json.loads(page.text_content("#policy-json")) == {"quant": {"k_bits": 4, "v_bits": 4, "group_size": 32,
                                                                    "rotate": False, "recent_k": 0, "recent_v": 0,
                                                                    "k_axis": "token"}}
    q4 = generate(page, "Water boils at", max_new=4)
    assert q4["policy"]["quant"]["k_bits"] == 4 and q4["policy"]["quant"]["v_bits"] == 4
    per_token_full = full["cache_bytes"] / full["tokens_cached"]
    per_token_q4 = q4["cache_bytes"] / q4["tokens_cached"]
    assert per_token_full == 46_080
    assert per_token_q4 == 7_200  # Q4_1, G = 32: 360 groups × 20 bytes
    m = meter(page)
    assert m["total"] == q4["cache_bytes"] < m["fp16"] < m["fp32"]
    assert "6.4× smaller than fp32" in page.text_content("#meter-ratio")
    # each layer's K bar is drawn at its share of the fp32 size (7200 / 46080 = 15.6 %)
    height = page.evaluate("document.querySelector('#layer-bars .kv.k .fill').style.height")
    assert height == "15.6%"


# ---- stop and reset -------------------------------------------------------------------------

def test_stop_ends_a_long_generation(page):
    page.fill("#prompt", "Write a long story about a lighthouse keeper and the sea.")
    page.locator("#chat").check()
    page.fill("#max-new-tokens", "400")
    # While the model runs, the page's main thread paints once per token but runs few other
    # tasks, so Playwright's actionability checks (script round trips) can starve. A person's
    # click is an input event, which Chromium serves first: press Stop as a mouse would.
    box = page.locator("#stop").bounding_box()
    catch_done(page)
    page.click("#generate")
    assert page.is_disabled("#generate") and page.is_disabled("#reset")
    page.wait_for_function("document.querySelectorAll('#output .gen span').length >= 3",
                           timeout=RUN_TIMEOUT_MS, polling="raf")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("window.__uiDone !== null", timeout=RUN_TIMEOUT_MS, polling="raf")
    wait_idle(page)
    res = page.evaluate("window.__uiDone")
    assert res["stop_reason"] == "stopped"
    assert 3 <= len(res["ids"]) < 400
    assert message(page)["text"].startswith("Stopped after")
    assert meter(page)["total"] == res["cache_bytes"] > 0


def test_reset_returns_the_meter_to_zero(page):
    generate(page, "One, two, three,", max_new=4)
    assert meter(page)["total"] > 0
    page.click("#reset")
    page.wait_for_function("document.querySelector('#meter-total').dataset.bytes === '0'", timeout=30_000)
    wait_idle(page)
    m = meter(page)
    assert m["total"] == m["fp32"] == m["fp16"] == 0
    assert all(k == 0 and v == 0 for _, k, v in m["layers"])
    assert page.text_content("#meter-total") == "0 B"
    assert page.locator("#output .placeholder").count() == 1
    page.wait_for_function("document.querySelector('#chart').dataset.points === '0'", timeout=5_000)


# ---- bad input: a message, and the page stays usable ---------------------------------------

@pytest.mark.parametrize("prompt, max_new, words", [
    ("", "8", "empty"),
    ("Hello", "0", "max_new_tokens"),
    ("Hello", "", "max_new_tokens"),
])
def test_bad_input_shows_a_message_and_page_stays_usable(page, prompt, max_new, words):
    before = generate(page, "The sky is", max_new=3)
    page.fill("#prompt", prompt)
    page.fill("#max-new-tokens", max_new)
    page.click("#generate")
    page.wait_for_function("!document.querySelector('#message').hidden", timeout=30_000)
    wait_idle(page)
    msg = message(page)
    assert msg["error"] and words in msg["text"], msg
    # nothing changed: the previous run is still on the meter and in the output
    assert meter(page)["total"] == before["cache_bytes"]
    assert page.text_content("#output .gen") == before["text"]
    # and the page still works, from the keyboard too (Ctrl+Enter in the prompt)
    page.fill("#prompt", "The sky is")
    page.fill("#max-new-tokens", "2")
    catch_done(page)
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("window.__uiDone !== null", timeout=RUN_TIMEOUT_MS, polling=100)
    wait_idle(page)
    assert message(page)["hidden"]
    assert meter(page)["total"] == page.evaluate("window.__uiDone.cache_bytes") > 0


def test_invalid_technique_setting_is_refused_with_the_engines_words(page):
    # a parameter value the panel cannot offer, forced in as a script might: the engine refuses
    set_quant(page, (4, 4))
    page.evaluate("""() => { const s = document.querySelector('#tech-quant-k_bits');
        s.append(new Option('5', '5')); s.value = '5'; s.dispatchEvent(new Event('change', {bubbles: true})); }""")
    page.fill("#prompt", "Hello")
    page.click("#generate")
    page.wait_for_function("!document.querySelector('#message').hidden", timeout=30_000)
    wait_idle(page)
    msg = message(page)
    assert msg["error"] and "k_bits" in msg["text"], msg
    page.evaluate("document.querySelector('#tech-quant-k_bits option[value=\"5\"]').remove()")
    set_quant(page, None)


def test_final_screenshot_after_a_generation(page, browser):
    """Leaves test-artifacts/ui.png: the page after a q4/q4 run, the q8/q8 run as its ghost."""
    set_quant(page, (8, 8))
    generate(page, "Explain in three sentences why a language model keeps a KV cache.", max_new=32, chat=True)
    set_quant(page, (4, 4))
    generate(page, "Explain in three sentences why a language model keeps a KV cache.", max_new=32, chat=True)
    page.wait_for_function("+document.querySelector('#chart').dataset.points > 32", timeout=5_000)
    browser.save("ui")
    set_quant(page, None)
    assert browser.blocked == []


def test_the_bits_map_shows_each_heads_width(page, profiled_engine):
    """entropy_bits (an example chip): the map under the meter shows every KV head's key and
    value width as the store holds it, equal to the native host's; uniform q4 then shows 4
    everywhere."""
    from kvlab.engine import Request

    page.click("#techniques button.chip:text-is('entropy_bits · 4')")
    try:
        policy = json.loads(page.text_content("#policy-json"))
        assert set(policy) == {"entropy_bits"}
        web = generate(page, "Water boils at", max_new=3)
        nat = profiled_engine.generate(Request(prompt="Water boils at", max_new_tokens=3, policy=policy))
        assert web["head_bits"] == nat["head_bits"] and web["cache_bytes"] == nat["cache_bytes"]
        cells = page.evaluate("""() => [...document.querySelectorAll('#head-bits .hb')].map((c) =>
            [+c.dataset.layer, +c.dataset.head, c.dataset.part, +c.dataset.bits, c.textContent])""")
        assert len(cells) == N_LAYERS * 3 * 2
        for layer, head, part, bits, text in cells:
            assert bits == nat["head_bits"][layer][head][0 if part == "K" else 1] and text == str(bits)
        widths = [c[3] for c in cells]
        assert widths.count(16) == 4 and 3 in widths  # 2 heads x K and V at 16; some heads pay at 3
    finally:
        full = page.locator("#techniques button.chip:text-is('full fp32')")
        full.click()
    set_quant(page, (4, 4))
    generate(page, "Water boils at", max_new=2)
    assert page.evaluate("[...document.querySelectorAll('#head-bits .hb')].every((c) => c.dataset.bits === '4')")


def test_the_bits_map_marks_collapsed_heads(page, profiled_engine):
    """collapse (an example chip): the 20 most collapsed heads' keys are marked μ with their
    residual's width, as the native host holds them; the panel composed quant + collapse."""
    from kvlab.engine import Request

    page.click("#techniques button.chip:text-is('collapse · top 20 + q4')")
    try:
        policy = json.loads(page.text_content("#policy-json"))
        assert policy["collapse"]["heads"] == 20 and "list" not in policy["collapse"]
        web = generate(page, "Water boils at", max_new=3)
        nat = profiled_engine.generate(Request(prompt="Water boils at", max_new_tokens=3, policy=policy))
        assert web["head_collapsed"] == nat["head_collapsed"] and web["head_bits"] == nat["head_bits"]
        assert web["ids"] == nat["ids"] and web["cache_bytes"] == nat["cache_bytes"]
        cells = page.evaluate("""() => [...document.querySelectorAll('#head-bits .hb')].map((c) =>
            [+c.dataset.layer, +c.dataset.head, c.dataset.part, c.dataset.collapsed, c.textContent])""")
        marked = {(layer, head) for layer, head, part, mu, text in cells if mu == "true"}
        assert marked == {(c["layer"], c["kv_head"]) for c in profiled_engine.profile["candidates"]["collapsed_keys"][:20]}
        assert all(text == "μ2" for layer, head, part, mu, text in cells if mu == "true")
        # a list typed into the panel is sent as a list
        page.check("#tech-collapse-list-use")
        page.fill("#tech-collapse-list", "[[0, 1], [3, 2]]")
        page.dispatch_event("#tech-collapse-list", "input")
        assert json.loads(page.text_content("#policy-json"))["collapse"]["list"] == [[0, 1], [3, 2]]
    finally:
        page.locator("#techniques button.chip:text-is('full fp32')").click()
