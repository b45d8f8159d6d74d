"""Downloads: the Output card's last run and the compare panel's comparison, as the JSON the
CLI prints (tokens and bytes equal the native host's)."""

from __future__ import annotations

import json
from pathlib import Path

from kvlab.compare import compare
from kvlab.engine import Request

PROMPT = "Name a colour."
N = 6


def saved(page, selector: str) -> dict:
    with page.expect_download() as d:
        page.click(selector)
    return json.loads(Path(d.value.path()).read_text(encoding="utf-8"))


def test_the_runs_json(browser, engine):
    page = browser.page
    page.fill("#prompt", PROMPT)
    page.check("#chat")
    page.fill("#max-new-tokens", str(N))
    page.click("#generate")
    page.wait_for_function("!document.getElementById('download-run').disabled && "
                           "!document.body.classList.contains('generating')", timeout=120_000)
    got = saved(page, "#download-run")
    native = engine.generate(Request(prompt=PROMPT, chat=True, max_new_tokens=N))
    assert set(got) == set(native)
    for key in ("prompt_ids", "ids", "text", "cache_bytes", "policy"):
        assert got[key] == native[key], key


def test_the_comparisons_json(browser, engine):
    page = browser.page
    page.fill("#prompt", PROMPT)
    page.check("#chat")
    page.fill("#max-new-tokens", str(N))
    page.fill("#compare-policy-a", "{}")
    page.fill("#compare-policy-b", '{"quant": {"k_bits": 8, "v_bits": 8}}')
    done = page.evaluate("Number(document.getElementById('compare').dataset.done || 0)")
    page.click("#compare-run")
    page.wait_for_function(f"Number(document.getElementById('compare').dataset.done || 0) > {done}", timeout=120_000)
    got = saved(page, "#compare-download")
    native = compare(engine, Request(prompt=PROMPT, chat=True, max_new_tokens=N), {}, {"quant": {"k_bits": 8, "v_bits": 8}})
    assert set(got) == set(native)
    assert got["a"]["ids"] == native["a"]["ids"] and got["b"]["cache_bytes"] == native["b"]["cache_bytes"]
    assert got["top1"] == native["top1"]
