"""The results page: every committed point on its chart, hover gives the configuration and
its provenance, the CSV download is kvlab.results' CSV, and a 1280×720 screenshot."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvlab.results import points, read_lines, to_csv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pts():
    return points(*(read_lines(REPO / "results" / f"{n}.jsonl") for n in ("quant", "eviction", "chunks")))


@pytest.fixture
def page(browser):
    p = browser.page
    p.set_viewport_size({"width": 1280, "height": 720})
    p.goto(browser.base_url + "/results.html")
    p.wait_for_function("document.body.dataset.state !== 'loading'")
    assert p.evaluate("document.body.dataset.state") == "ready"
    yield p
    browser.open()  # back to the lab for the other tests


def test_every_point_is_on_its_chart(page, pts, browser):
    got = page.evaluate("Object.fromEntries([...document.querySelectorAll('.rchart')].map(f => "
                        "[f.dataset.task, f.querySelectorAll('circle.pt').length]))")
    for task, n in got.items():
        want = [p for p in pts if p["task"] == task and (task != "ppl" or p["kl"] is not None)]
        assert n == len(want), task
    page.focus(".rchart[data-task=ppl] circle.pt >> nth=0")
    readout = page.text_content(".rchart[data-task=ppl] [data-role=readout]")
    first = next(p for p in pts if p["task"] == "ppl")
    assert readout.startswith(first["label"]) and first["commit"] in readout and "made by: python benchmarks/" in readout
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(REPO / "test-artifacts" / "results-1280x720.png"))
    assert browser.blocked == []


def test_the_csv_is_the_committed_points(page, pts):
    with page.expect_download() as d:
        page.click("a[href='./results.csv']")
    assert Path(d.value.path()).read_text(encoding="utf-8") == to_csv(pts)
