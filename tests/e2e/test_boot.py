"""The page boots offline, and window.kvlab runs the very engine the native host runs.

One page is shared by every test here (see conftest.py); the reload test comes last.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from kvlab.engine import Request

POLICIES = {
    "full": {},
    "q8q8": {"quant": {"k_bits": 8, "v_bits": 8}},
    "q4q4": {"quant": {"k_bits": 4, "v_bits": 4}},
    # aging: keys per channel in blocks of 16 (KIVI), values through a window of 4
    "kivi": {"quant": {"k_bits": 4, "v_bits": 4, "k_axis": "channel", "group_size": 16, "recent_v": 4}},
    # collapsed keys: two heads' keys as the prompt's mean key alone, one as mean + 2-bit residual
    "collapse": {"quant": {"k_bits": 8, "v_bits": 8},
                 "collapse": {"list": [[11, 0], [2, 0], [29, 1]], "bits": 0, "mean": "prompt"}},
}
PROMPTS = {
    "raw": ("The three primary colours are", False),
    "chat": ("Name a planet of the solar system.", True),
}
NEW_TOKENS = 12


# ---- boot ---------------------------------------------------------------------------------

def test_boots_offline_to_ready(browser):
    info = browser.page.evaluate("kvlab.info")
    assert browser.page.evaluate("document.body.dataset.state") == "ready"
    assert info["store"] == "simd"  # Chromium has WebAssembly SIMD
    assert info["crossOriginIsolated"] is True and info["threads"] >= 1
    assert info["config"]["n_layers"] == 30
    from kvlab.techniques import REGISTRY

    assert [t["name"] for t in info["techniques"]] == list(REGISTRY)
    assert info["profile"] is True  # the head profile reached the engine (pyramidkv, compresskv, duo)
    assert set(info["versions"]) >= {"pyodide", "ort", "uplot", "kvlab"}
    steps = browser.page.evaluate("Object.keys(kvlab.progress)")
    assert set(steps) >= {"check", "manifest", "python", "engine", "model", "session", "store", "ready"}
    model = browser.page.evaluate("kvlab.progress.model")
    # the weights download as the GGUF's blocks: 96 MB, not model.onnx's 269 MB
    parts = browser.page.evaluate("fetch('manifest.json').then(r => r.json()).then(m => m.weights.parts)")
    assert model["unit"] == "bytes" and model["done"] == model["total"] == sum(p["bytes"] for p in parts) < 100e6
    assert info["expandMs"] > 0 and info["notices"] == []  # served from 127.0.0.1 with isolation: nothing withheld
    assert browser.blocked == [], "requests left 127.0.0.1"
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in browser.requests if u.startswith("http"))


def test_techniques_is_the_registry(browser):
    from kvlab.techniques import REGISTRY

    got = browser.page.evaluate("kvlab.techniques()")
    assert got == [t.describe() for t in REGISTRY.values()]


# ---- the same tokens and bytes as the native host ------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_ids_and_bytes_equal_native(browser, engine, prompt, policy):
    text, chat = PROMPTS[prompt]
    pol = POLICIES[policy]
    native = engine.generate(Request(prompt=text, chat=chat, max_new_tokens=NEW_TOKENS, policy=pol, ignore_eos=True))
    web = browser.generate(prompt=text, chat=chat, maxNewTokens=NEW_TOKENS, policy=pol, ignoreEos=True)
    assert "error" not in web, web
    assert web["prompt_ids"] == native["prompt_ids"]
    assert web["ids"] == native["ids"]
    assert web["text"] == native["text"]
    for key in ("cache_bytes", "fp32_bytes", "fp16_bytes", "layer_bytes", "bytes_per_step", "tokens_cached", "policy",
                "head_bits", "head_collapsed"):
        assert web[key] == native[key], key
    assert web["host"] == "browser" and web["store"] == "simd"
    assert set(web) == set(native)


def test_token_events_stream_the_meter(browser):
    events = browser.page.evaluate("""async () => {
        const seen = [];
        const on = (e) => seen.push(e.detail);
        window.addEventListener('kvlab:token', on);
        let done = null;
        window.addEventListener('kvlab:done', (e) => { done = e.detail; }, { once: true });
        const res = await kvlab.generate({prompt: 'Once upon a time', maxNewTokens: 5, ignoreEos: true});
        window.removeEventListener('kvlab:token', on);
        return { seen, res, done };
    }""")
    seen, res = events["seen"], events["res"]
    assert [e["index"] for e in seen] == list(range(5))
    assert [e["id"] for e in seen] == res["ids"]
    assert [e["cache_bytes"] for e in seen] == res["bytes_per_step"]
    assert len(seen[-1]["layer_bytes"]) == 30 and all(len(kv) == 2 for kv in seen[-1]["layer_bytes"])
    assert {"text", "tokens_cached", "fp32_bytes", "fp16_bytes", "ms"} <= set(seen[0])
    assert events["done"]["ids"] == res["ids"]


# ---- bad input, busy, stop, reset ----------------------------------------------------------

@pytest.mark.parametrize("opts, words", [
    ({"prompt": "   "}, "prompt is empty"),
    ({"prompt": "hello " * 9000}, "more than the model's context"),
    ({"prompt": "hi", "policy": {"evict": {}}}, "unknown technique 'evict'"),
    ({"prompt": "hi", "policy": {"quant": {"k_bits": 5}}}, "quant.k_bits must be one of"),
    ({"prompt": "hi", "maxNewTokens": 0}, "max_new_tokens must be"),
    ({"prompt": "hi", "colour": "red"}, "unknown option 'colour'"),
], ids=["empty", "over-long", "unknown-technique", "bits-out-of-range", "zero-tokens", "unknown-option"])
def test_bad_input_rejects_and_page_stays_usable(browser, opts, words):
    res = browser.generate(**opts)
    assert words in res.get("error", ""), res
    ok = browser.generate(prompt="Hello", maxNewTokens=2)
    assert "error" not in ok and len(ok["ids"]) >= 1
    assert browser.page.evaluate("document.body.dataset.state") == "ready"


def test_one_generation_at_a_time_and_stop(browser):
    res = browser.page.evaluate("""async () => {
        const first = kvlab.generate({prompt: 'Count: one, two, three,', maxNewTokens: 200, ignoreEos: true});
        const second = await kvlab.generate({prompt: 'x'}).then(() => 'ran', (e) => e.message);
        await new Promise((r) => window.addEventListener('kvlab:token', r, { once: true }));
        kvlab.stop();
        return { second, first: await first };
    }""")
    assert "already running" in res["second"]
    assert res["first"]["stop_reason"] == "stopped"
    assert len(res["first"]["ids"]) < 200


def test_reset_empties_the_store(browser):
    res = browser.generate(prompt="The KV cache", maxNewTokens=3)
    assert res["cache_bytes"] > 0
    out = browser.page.evaluate("""async () => {
        let ev = null;
        window.addEventListener('kvlab:reset', (e) => { ev = e.detail; }, { once: true });
        const r = await kvlab.reset();
        return { r, ev };
    }""")
    assert out["r"]["cache_bytes"] == 0 and out["ev"]["cache_bytes"] == 0
    assert out["r"]["tokens_cached"] == 0
    assert all(k == v == 0 for k, v in out["r"]["layer_bytes"])


# ---- the scalar store, and a boot that fails ---------------------------------------------

def test_scalar_store_gives_the_same_tokens(browser, engine):
    """?store=scalar takes the path of a browser without SIMD: kvstore-scalar.wasm, same bytes."""
    page = browser.context.new_page()
    try:
        page.goto(browser.base_url + "/?store=scalar")
        page.wait_for_function("document.body.dataset.state === 'ready'", timeout=180_000, polling=200)
        assert page.evaluate("kvlab.info.store") == "scalar"
        check = page.evaluate("kvlab.progress.check")
        assert check["simd"] is False and "scalar" in check["note"]
        pol = POLICIES["q4q4"]
        native = engine.generate(Request(prompt="The moon", max_new_tokens=6, policy=pol, ignore_eos=True))
        web = page.evaluate("o => kvlab.generate(o)", {"prompt": "The moon", "maxNewTokens": 6, "policy": pol, "ignoreEos": True})
        assert web["ids"] == native["ids"] and web["cache_bytes"] == native["cache_bytes"]
        assert web["store"] == "scalar"
    finally:
        page.close()


def test_boot_failure_is_shown_in_words(browser):
    page = browser.context.new_page()
    try:
        page.add_init_script("window.__errors = []; addEventListener('kvlab:error', (e) => __errors.push(e.detail));")
        page.route("**/manifest.json", lambda route: route.fulfill(status=404, body="gone"))
        page.goto(browser.base_url + "/")
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=60_000, polling=100)
        errors = page.evaluate("window.__errors")
        assert errors and errors[0]["step"] == "manifest" and "HTTP 404" in errors[0]["message"]
        shown = page.text_content("#boot-error")
        assert "manifest.json" in shown and page.is_visible("#boot-error")
    finally:
        page.close()


# ---- reload: the model comes from the Cache API (keep this test last) ----------------------

def test_reload_serves_the_model_from_cache(browser):
    before = len(browser.requests)
    browser.page.reload()
    browser.wait_ready()
    after = [urlsplit(u).path for u in browser.requests[before:]]
    assert any(p.endswith("/manifest.json") for p in after), "the reload did not happen"
    assert [p for p in after if "/model/weights-" in p] == []
    assert browser.page.evaluate("kvlab.info.modelFromCache") is True
    ok = browser.generate(prompt="Hello", maxNewTokens=2)
    assert "error" not in ok
    assert browser.blocked == []
