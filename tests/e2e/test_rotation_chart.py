"""The demo page's "Outliers and rotation" chart: one real key, before and after the rotation.

Driven on the shared booted page of conftest.py, and checked against the native host:

* ``kvlab.keyChannels`` gives the newest key of a layer and KV head as the page's store
  holds it: 64 channels, the same as the native store's for the same prompt and policy
  (to float rounding), its rotation (``kvlab.formats.rotate_row``) with the same norm, and
  a lower peak-to-RMS ratio after the rotation;
* the canvas draws that key after each run, whoever started it (the Generate button or a
  script), and again when the layer and head fields change: bar heights read back from the
  canvas pixels, on one scale for both panels;
* a layer or head the model does not have, and an empty store, give the engine's words.

Every wait is on a condition (a data attribute the chart sets when it draws), never a sleep.
"""

from __future__ import annotations

import json
import math

import pytest

from kvlab import formats, web
from kvlab.engine import Engine, Request

RUN_TIMEOUT_MS = 240_000
DRAW_TIMEOUT_MS = 30_000
N_LAYERS = 30
KV_HEADS = 3
HEAD_DIM = 64
PROMPT = "Explain in three sentences why a language model keeps a KV cache."
NEW_TOKENS = 4
QUANT = {"quant": {"k_bits": 4, "v_bits": 4, "rotate": True}}


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def native(host, dist):
    """A native engine with the head profile the page loads (as test_cachemap's)."""
    return Engine(host, profile=json.loads((dist / "profile.json").read_text(encoding="utf-8")))


@pytest.fixture
def page(browser):
    """The shared page, idle, at the full cache and layer 0 / KV head 0; put back so."""
    p = browser.page
    wait_idle(p)
    full_cache(p)
    yield p
    wait_idle(p)
    full_cache(p)
    choose(p, 0, 0)


# ---- helpers -------------------------------------------------------------------------------

def wait_idle(page):
    page.wait_for_function(
        "document.body.dataset.state === 'ready' && !document.body.classList.contains('generating')"
        " && !document.querySelector('#generate').disabled",
        timeout=RUN_TIMEOUT_MS, polling=100,
    )


def full_cache(page):
    page.click("#techniques button.chip:text-is('full fp32')")
    assert page.text_content("#policy-json") == "{}"


def draws(page) -> int:
    return int(page.get_attribute("#keychart", "data-draws"))


def wait_chart(page, after: int, **want):
    """Until the chart has drawn again (more than ``after`` draws) with these data-* values."""
    cond = " && ".join(f"c.dataset.{k} === {json.dumps(str(v))}" for k, v in want.items()) or "true"
    page.wait_for_function(f"(() => {{ const c = document.querySelector('#keychart');"
                           f" return +c.dataset.draws > {after} && {cond}; }})()",
                           timeout=DRAW_TIMEOUT_MS, polling="raf")


def choose(page, layer, head):
    """Type a layer and a KV head into the panel's fields (each fires an input event)."""
    page.fill("#keys-layer", str(layer))
    page.fill("#keys-head", str(head))


def generate(page, prompt, max_new, chat=True):
    """Fill the form, click Generate; the run's result once the page is idle again."""
    page.fill("#prompt", prompt)
    page.locator("#chat").set_checked(chat)
    page.fill("#max-new-tokens", str(max_new))
    page.evaluate("""() => { window.__uiDone = null;
        window.addEventListener('kvlab:done', (e) => { window.__uiDone = e.detail; }, { once: true }); }""")
    page.click("#generate")
    page.wait_for_function("window.__uiDone !== null", timeout=RUN_TIMEOUT_MS, polling="raf")
    wait_idle(page)
    return page.evaluate("window.__uiDone")


def key_channels(page, opts):
    """kvlab.keyChannels(opts), or {error, kind} if it rejected."""
    return page.evaluate("(o) => kvlab.keyChannels(o).catch((e) => ({ error: e.message, kind: e.kind }))", opts)


def chart_view(page):
    return page.evaluate("import('./ui.js').then((m) => m.keyChartView())")


def norm(x) -> float:
    return math.sqrt(sum(v * v for v in x))


def close(a, b, rel=1e-5) -> bool:
    """Equal to float32 rounding, relative to the row's size (a channel may be near 0)."""
    scale = max(abs(v) for v in b)
    return len(a) == len(b) and all(abs(x - y) <= rel * scale for x, y in zip(a, b, strict=True))


def check_key(k, layer, head, position):
    """One keyChannels result: its shape, its rotation, its norms and ratios."""
    assert (k["layer"], k["head"], k["position"]) == (layer, head, position), k
    assert len(k["channels"]) == len(k["rotated"]) == HEAD_DIM
    assert k["rotated"] == pytest.approx(formats.rotate_row(k["channels"]), rel=1e-12, abs=1e-12)
    assert norm(k["rotated"]) == pytest.approx(norm(k["channels"]), rel=1e-5)
    assert k["norm"]["after"] == pytest.approx(k["norm"]["before"], rel=1e-5)
    assert k["norm"]["before"] == pytest.approx(norm(k["channels"]), rel=1e-9)
    rms = norm(k["channels"]) / math.sqrt(HEAD_DIM)
    assert k["peak_to_rms"]["before"] == pytest.approx(max(map(abs, k["channels"])) / rms, rel=1e-9)
    assert k["peak_to_rms"]["after"] == pytest.approx(max(map(abs, k["rotated"])) / rms, rel=1e-5)


def bar_heights(page, view):
    """Per panel, per channel: the pixels of the panel's bar colour in the bar's middle
    column, read from the canvas."""
    return page.evaluate("""(v) => {
        const ctx = document.querySelector('#keychart').getContext('2d');
        return v.panels.map((p) => p.bars.map(([x0, x1]) => {
            const x = (x0 + x1 - 1) >> 1, top = Math.floor(p.top), h = Math.ceil(p.height);
            const d = ctx.getImageData(x, top, 1, h).data;
            let n = 0;
            for (let i = 0; i < h; i++)
                if (d[4 * i] === p.colour[0] && d[4 * i + 1] === p.colour[1] && d[4 * i + 2] === p.colour[2]) n++;
            return n;
        }));
    }""", view)


# ---- (a) the page's key is the native store's, and the rotation flattens it ----------------

def test_key_channels_equal_the_native_store_and_rotation_flattens(page, native):
    before = draws(page)
    res = generate(page, PROMPT, NEW_TOKENS)
    newest = res["tokens_cached"] - 1  # the last fed token (no eviction: its position)
    wait_chart(page, before, state="drawn", layer=0, head=0, position=newest)
    nat = native.generate(Request(prompt=PROMPT, chat=True, max_new_tokens=NEW_TOKENS))
    assert res["ids"] == nat["ids"] and res["tokens_cached"] == nat["tokens_cached"]

    flatter = []
    for layer in range(N_LAYERS):
        for head in range(KV_HEADS):
            k = key_channels(page, {"layer": layer, "head": head})
            assert "error" not in k, k
            check_key(k, layer, head, newest)
            n = web.newest_key(native, layer, head)
            assert n["position"] == k["position"]
            assert close(k["channels"], n["channels"]), (layer, head)
            assert close(k["rotated"], n["rotated"]), (layer, head)
            if k["peak_to_rms"]["after"] < k["peak_to_rms"]["before"]:
                flatter.append((layer, head))
    # the outlier story: the rotation lowers the peak-to-RMS ratio (on this model, of
    # nearly every head's key)
    assert len(flatter) >= 1, "the rotation flattened no key"
    assert len(flatter) >= N_LAYERS * KV_HEADS // 2, flatter


# ---- (b) the canvas draws the key, redraws on the fields and after a script's run ------------

def test_chart_draws_the_key_and_follows_the_fields(page):
    before = draws(page)
    res = generate(page, PROMPT, 2)
    newest = res["tokens_cached"] - 1
    wait_chart(page, before, state="drawn", layer=0, head=0, position=newest)
    check_drawn(page, 0, 0, newest)
    assert page.is_hidden("#keys-empty")
    assert "outlier channels" in page.text_content("#keys-lesson")

    # the fields: another layer and head, drawn without a run
    before = draws(page)
    choose(page, 17, 2)
    wait_chart(page, before, state="drawn", layer=17, head=2, position=newest)
    check_drawn(page, 17, 2, newest)

    # a script's run (no Generate click), with a rotated 4-bit policy: the chart follows
    # it, and the key is the dequantized one the model reads (not the fp32 key of before)
    full = key_channels(page, {"layer": 17, "head": 2})
    before = draws(page)
    res = page.evaluate("(o) => kvlab.generate(o)", {"prompt": PROMPT, "chat": True, "maxNewTokens": 2,
                                                     "policy": QUANT})
    assert res["policy"]["quant"]["rotate"] is True
    wait_chart(page, before, state="drawn", layer=17, head=2, position=res["tokens_cached"] - 1)
    q = check_drawn(page, 17, 2, res["tokens_cached"] - 1)
    assert q["channels"] != full["channels"]
    assert close(q["channels"], full["channels"], rel=0.25)  # the same key, through 4 bits


def check_drawn(page, layer, head, position):
    """The chart shows kvlab.keyChannels's key: its data, its caption, its bars' pixels."""
    view = chart_view(page)
    k = key_channels(page, {"layer": layer, "head": head})
    check_key(k, layer, head, position)
    assert view["state"] == "drawn" and view["error"] is None
    assert (view["layer"], view["head"], view["position"]) == (layer, head, position)
    assert view["channels"] == k["channels"] and view["rotated"] == k["rotated"]
    pr = k["peak_to_rms"]
    assert f"peak / RMS {pr['before']:.2f} before → {pr['after']:.2f} after" in view["caption"], view["caption"]
    assert f"layer {layer} · KV head {head}" in view["caption"]

    # the pixels: each bar as tall as its value on the panels' one scale (the dashed ±RMS
    # lines and the zero line cross some bars: a few pixels of slack)
    assert len(view["panels"]) == 2 and view["panels"][0]["scale"] == view["panels"][1]["scale"]
    heights = bar_heights(page, view)
    for panel, values, got in zip(view["panels"], (k["channels"], k["rotated"]), heights, strict=True):
        want = [abs(v) * panel["scale"] for v in values]
        slack = 4 * max(1, round(view["width"] / page.evaluate("document.querySelector('#keychart').clientWidth")))
        assert all(abs(g - w) <= slack for g, w in zip(got, want, strict=True)), (list(zip(got, want)), slack)
    # the outlier stands taller before the rotation than anything after it
    if pr["after"] < pr["before"]:
        assert max(heights[0]) > max(heights[1])
    return k


# ---- (c) what the engine refuses -------------------------------------------------------------

def test_bad_layer_or_head_is_an_input_error(page):
    generate(page, "The sky is", 1, chat=False)
    for opts, words in (
        ({"layer": N_LAYERS, "head": 0}, f"layer must be a whole number from 0 to {N_LAYERS - 1}, got {N_LAYERS}"),
        ({"layer": -1, "head": 0}, "layer must be a whole number"),
        ({"layer": 1.5}, "layer must be a whole number"),
        ({"layer": True}, "layer must be a whole number"),
        ({"layer": 0, "head": KV_HEADS}, f"from 0 to {KV_HEADS - 1}, got {KV_HEADS}"),
        ({"layer": 0, "kv_head": 0}, "unknown option 'kv_head'"),
    ):
        res = key_channels(page, opts)
        assert res.get("kind") == "input" and words in res.get("error", ""), (opts, res)

    # in the panel: the engine's words under the chart, and the chart empty
    before = draws(page)
    page.fill("#keys-layer", str(N_LAYERS))
    wait_chart(page, before, state="error")
    assert "layer must be a whole number from 0 to 29" in page.text_content("#keys-caption")
    before = draws(page)
    page.fill("#keys-layer", "3")
    wait_chart(page, before, state="drawn", layer=3)


def test_empty_store_says_generate_first(page):
    generate(page, "One, two,", 1, chat=False)
    before = draws(page)
    page.click("#reset")
    wait_chart(page, before, state="empty")
    wait_idle(page)
    assert key_channels(page, {"layer": 0, "head": 0}) == {"error": "nothing cached yet: generate first",
                                                           "kind": "input"}
    assert page.is_visible("#keys-empty")
    assert page.text_content("#keys-caption") == ""
