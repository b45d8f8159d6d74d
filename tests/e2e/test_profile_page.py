"""The head profile page (profile.html): the builder's profile drawn, and one rerun live.

The page opens in its own tab of the shared browser context (conftest.py), so the shared
index page stays where it is and the same offline guard watches every request. Every
number the page shows is checked against the JSON files of dist/ it was drawn from. Waits
are on <body data-profile> ("ready" once the precomputed profile is drawn, "live" once a
live one is) and <body data-live> ("error" ends a live run), never on time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
N_LAYERS = 30
COLS = {"kv_head": 3, "q_head": 9, "layer": 1}
HEATMAPS = {"key_collapse": "kv_head", "value_collapse": "kv_head", "layer_sensitivity": "layer",
            "entropy": "q_head", "sink_mass": "q_head", "retrieval": "q_head", "recent_share": "q_head"}
LIVE_TIMEOUT_MS = 600_000  # start-up (~20 s) and a quick profile (about a minute) on a busy machine
READOUT = re.compile(r"^layer (\d+)(?:, (query head|KV head) (\d+))?: (\S+) (\S+)$")

# what the page drew: per heatmap its shape attributes and every cell's data-value
HEATMAP_JS = """() => [...document.querySelectorAll('.heatmap')].map(h => ({
    metric: h.dataset.metric, per: h.dataset.per, rows: +h.dataset.rows, cols: +h.dataset.cols,
    values: [...h.querySelectorAll('.hm-row')].map(r => [...r.querySelectorAll('.hm-cell')].map(c => +c.dataset.value)),
}))"""


# ---- fixtures -----------------------------------------------------------------------------

_pages: dict = {}  # name → this module's open pages, saved into test-artifacts/ on a failure


def open_profile_page(browser, query: str = "", name: str = "profile"):
    """A new tab on profile.html (+ query), once the precomputed profile is drawn."""
    page = browser.context.new_page()
    _pages[name] = page
    page.on("console", lambda m: browser.logs.append(f"[{name}] [{m.type}] {m.text}"))
    page.on("pageerror", lambda e: browser.logs.append(f"[{name}] [pageerror] {e}"))
    page.goto(f"{browser.base_url}/profile.html{query}")
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.profile)", timeout=30_000, polling=100)
    assert page.evaluate("document.body.dataset.profile") == "ready", page.text_content("#load-error")
    return page


@pytest.fixture(scope="module")
def page(browser):
    p = open_profile_page(browser)
    yield p
    p.close()


@pytest.fixture(scope="module")
def data(dist):
    return {name: json.loads((dist / f"{name}.json").read_text()) for name in ("profile", "observations")}


@pytest.fixture(autouse=True)
def keep_profile_page_on_failure(request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed:
        return
    ARTIFACTS.mkdir(exist_ok=True)
    for name, p in _pages.items():
        if not p.is_closed():
            p.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{name}.png"), full_page=True)


def as_grid(metric: dict) -> list[list[float]]:
    """(layers, heads); a per-layer metric as one column."""
    return [[v] for v in metric["values"]] if metric["per"] == "layer" else metric["values"]


# ---- the precomputed profile ----------------------------------------------------------------

def test_heatmaps_equal_profile_json(page, data):
    drawn = {h["metric"]: h for h in page.evaluate(HEATMAP_JS)}
    assert set(drawn) == set(HEATMAPS)
    metrics = data["profile"]["metrics"]
    for name, per in HEATMAPS.items():
        h = drawn[name]
        assert metrics[name]["per"] == per == h["per"], name
        assert (h["rows"], h["cols"]) == (N_LAYERS, COLS[per]), name
        assert len(h["values"]) == N_LAYERS and all(len(r) == COLS[per] for r in h["values"]), name
        assert h["values"] == as_grid(metrics[name]), name


def test_every_heatmap_has_a_legend_and_an_explanation(page, data):
    for name in HEATMAPS:
        unit = data["profile"]["metrics"][name]["unit"]
        legend = page.locator(f'.hm-legend[data-for="{name}"]')
        assert legend.locator(".hm-legend-min").text_content().strip()
        assert unit in legend.locator(".hm-legend-max").text_content()
        assert "gradient" in legend.locator(".hm-legend-bar").evaluate("e => e.style.background")
        fig = page.locator(f"#map-{name}")
        assert fig.locator("h3").text_content().strip()
        assert "Bright" in fig.locator(".map-means").text_content() or "Dark" in fig.locator(".map-means").text_content()


@pytest.mark.parametrize("name,layer,head", [
    ("retrieval", 18, 7), ("entropy", 0, 0), ("key_collapse", 11, 2), ("value_collapse", 29, 1),
    ("layer_sensitivity", 25, 0),
])
def test_hover_writes_the_readout(page, data, name, layer, head):
    cell = page.locator(f'.heatmap[data-metric="{name}"] .hm-cell[data-layer="{layer}"][data-head="{head}"]')
    cell.hover()
    text = page.text_content(f'.hm-readout[data-for="{name}"]').strip()
    assert text == cell.get_attribute("title")
    m = READOUT.match(text)
    assert m, text
    metric = data["profile"]["metrics"][name]
    want = as_grid(metric)[layer][head]
    assert int(m[1]) == layer
    if metric["per"] == "layer":
        assert m[2] is None
    else:
        assert m[2] == {"q_head": "query head", "kv_head": "KV head"}[metric["per"]] and int(m[3]) == head
    assert float(m[4].replace("−", "-")) == pytest.approx(want, rel=6e-3, abs=1e-9)
    assert m[5] == metric["unit"]


def test_four_observations_with_their_sentences(page, data):
    obs = data["observations"]["observations"]
    figs = page.evaluate("""() => [...document.querySelectorAll('.obs')].map(f => ({
        id: f.dataset.obs, title: f.querySelector('.obs-title').textContent,
        sentence: f.querySelector('.obs-sentence').textContent,
        bars: f.querySelectorAll('svg rect.bar').length}))""")
    assert [f["id"] for f in figs] == [o["id"] for o in obs] == ["recency", "kv_asymmetry", "heavy_hitters", "layer_entropy"]
    for f, o in zip(figs, obs):
        assert f["title"] == o["title"]
        assert f["sentence"] == o["sentence"]
    bars = {f["id"]: f["bars"] for f in figs}
    assert bars == {"recency": N_LAYERS, "kv_asymmetry": 2, "heavy_hitters": 6, "layer_entropy": N_LAYERS}


def test_candidates_texts_and_the_run(page, data):
    prof = data["profile"]
    for name, ranked in prof["candidates"].items():
        if not isinstance(ranked, list):
            continue
        rows = page.locator(f'#candidates table[data-list="{name}"] tbody tr')
        assert rows.count() == min(5, len(ranked)), name
        first = rows.nth(0).locator("td").all_text_contents()
        assert first[1] == str(ranked[0]["layer"]), name
    texts = page.locator("#texts tbody tr")
    assert texts.count() == len(prof["texts"])
    for i, t in enumerate(prof["texts"]):
        cells = texts.nth(i).locator("td").all_text_contents()
        assert cells[:3] == [t["kind"], t["name"], t["sha256"][:12]]
    run = page.text_content("#run")
    assert f"{prof['seconds']} s" in run and prof["host"] in run
    assert "precomputed by the builder" in page.text_content("#view-label")


def test_nothing_leaves_127_0_0_1(page, browser):
    assert any(u.endswith("/profile.json") for u in browser.requests)
    assert browser.blocked == [], "requests left 127.0.0.1"
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in browser.requests if u.startswith("http"))


# ---- live: the same profiler in this browser ----------------------------------------------------

def test_live_quick_profile_redraws_the_page(browser, data, engine, dist):
    """The live run redraws every map with its own numbers: those of the same quick profile
    run natively (the runtimes agree within float noise: test_profile_agreement.py)."""
    from dataclasses import replace

    from kvlab.profile import Settings, profile

    page = open_profile_page(browser, "?profile=quick", name="live")
    try:
        quick = json.loads(page.get_attribute("#live-run", "data-quick"))
        native = profile(engine, json.loads((dist / "profile_texts.json").read_text()), replace(Settings(), **quick))
        assert page.evaluate("typeof window.kvlab?.start === 'function' && typeof window.kvlab?.profile === 'function'"), \
            "boot.js has no kvlab.start / kvlab.profile"
        page.click("#live-run")
        assert page.locator("#live-run").is_disabled()
        page.wait_for_function(
            "document.body.dataset.profile === 'live' || document.body.dataset.live === 'error'",
            timeout=LIVE_TIMEOUT_MS, polling=500,
        )
        assert page.evaluate("document.body.dataset.live") == "done", page.text_content("#live-error")
        assert page.locator("#live-run").is_enabled()

        label = page.text_content("#view-label")
        assert "live, this browser" in label and "quick" in label
        assert "context 128" in page.text_content("#run") and "browser" in page.text_content("#run")
        drawn = {h["metric"]: h for h in page.evaluate(HEATMAP_JS)}
        assert set(drawn) == set(HEATMAPS)
        for name, per in HEATMAPS.items():
            assert len(drawn[name]["values"]) == N_LAYERS, name
            assert all(len(r) == COLS[per] for r in drawn[name]["values"]), name
        pre = data["profile"]["metrics"]
        # a 128-token context attends differently from the builder's 512: the maps were redrawn
        assert drawn["entropy"]["values"] != pre["entropy"]["values"]
        for name in HEATMAPS:  # ... with the live profile's numbers
            want = np.array(as_grid(native["metrics"][name]))
            tol = 1e-3 * np.abs(want) + 2e-5 if name == "layer_sensitivity" else 2e-5
            assert np.all(np.abs(np.array(drawn[name]["values"]) - want) <= tol), name

        # the toggle goes back to the builder's profile, numbers and all
        page.check('input[name="view"][value="precomputed"]')
        page.wait_for_function("document.body.dataset.profile === 'ready'", timeout=10_000, polling=100)
        drawn = {h["metric"]: h for h in page.evaluate(HEATMAP_JS)}
        assert drawn["entropy"]["values"] == pre["entropy"]["values"]
        assert "precomputed by the builder" in page.text_content("#view-label")
        assert browser.blocked == [], "requests left 127.0.0.1"
    finally:
        page.close()


def test_seed_001s_table_beside_the_committed_results(page, dist):
    """The seed's rows beside this model's, as results.json (kvlab.results of the committed
    results/quant.jsonl) has them: every figure on the page is the file's."""
    res = json.loads((dist / "results.json").read_text())
    got = page.evaluate("""() => [...document.querySelectorAll('#seed001-table tbody tr')].map((r) => ({
        row: r.dataset.row, cells: [...r.cells].map((c) => c.textContent.trim()),
        kl: r.querySelector('[data-kl]')?.dataset.kl, ratio: r.querySelector('[data-ratio]')?.dataset.ratio}))""")
    assert [g["row"] for g in got] == [r["row"] for r in res["rows"]] == [
        "FP32", "K4 + V16 + k128", "K4 + V4 + k128", "K3 + V4 + k128", "K4 + V2 + k128",
        "K4 + V4 + k128 + PyramidKV (b=256)"]
    for g, r in zip(got, res["rows"]):
        assert g["cells"][0] == r["seed"]["config"]
        assert float(g["kl"]) == pytest.approx(r["here"]["kl"]["mean"]) and float(g["ratio"]) == pytest.approx(
            r["here"]["ratio_vs_fp32"])
    assert got[2]["cells"][1:3] == ["6.4×", "+3.0 %"]  # the seed's K4 + V4 + k128
