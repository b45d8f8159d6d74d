"""The page's lessons (seed 004's and one per technique family): run live, and replayed from
the builder's recording.

Driven as a person drives it (the lesson's buttons), on the shared booted page. Each run's
panel carries the tokens and bytes it shows (``data-ids``, ``data-cache-bytes``); they must
equal the native host's run of the same lesson (``kvlab.lesson.run``, the head profile the
page loads) — live, and in the recording, which says on every panel that it is recorded.
The live test prints each run's time in the browser (the lesson aims at ≤ 15 s a run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvlab import lesson
from kvlab.engine import Engine

LESSONS = json.loads((Path(__file__).resolve().parents[2] / "site" / "static" / "lessons.json").read_text())["lessons"]
RUN_TIMEOUT_MS = 600_000
IDS = [les["id"] for les in LESSONS]


@pytest.fixture(scope="module")
def natives(host, dist):
    """Each lesson run natively, with the head profile the page loads (once, on demand)."""
    engine = Engine(host, profile=json.loads((dist / "profile.json").read_text(encoding="utf-8")))
    done = {}

    def run(les):
        if les["id"] not in done:
            done[les["id"]] = lesson.run(engine, les["item"], [r["policy"] for r in les["runs"]])
        return done[les["id"]]
    return run


@pytest.fixture(params=IDS)
def LES(request):
    return next(les for les in LESSONS if les["id"] == request.param)


@pytest.fixture
def native(natives, LES):
    return natives(LES)


def panels(page, LES) -> list[dict]:
    return page.evaluate("""id => [...document.querySelectorAll(`.lesson[data-lesson="${id}"] .lesson-run`)].map(p => ({
        state: p.dataset.state, source: p.dataset.source, ids: (p.dataset.ids || '').split(',').filter(Boolean).map(Number),
        bytes: Number(p.dataset.cacheBytes), seconds: Number(p.dataset.seconds), answer: p.querySelector('[data-role=answer]').textContent,
        mark: p.querySelector('[data-role=source]').hidden ? '' : p.querySelector('[data-role=source]').textContent,
        digits: [...p.querySelectorAll('.digit')].map(d => d.className.split(' ').find(c => c.startsWith('from-'))),
        mapTokens: Number(p.querySelector('[data-role=map]').dataset.tokens)}))""", LES["id"])


def test_the_recording_replays_marked_as_recorded(browser, LES, native, dist):
    """Replay shows every run at once, each marked recorded, with the recording's tokens and
    bytes — which are the native host's."""
    page = browser.page
    page.click(f'button[data-replay="{LES["id"]}"]')
    page.wait_for_function(f"document.getElementById('lesson-live').dataset.replayed === '{LES['id']}'")
    rec = json.loads((dist / "lessons_recorded.json").read_text())["lessons"][LES["id"]]
    got = panels(page, LES)
    assert len(got) == len(LES["runs"]) == len(rec["runs"])
    for shown, r, n in zip(got, rec["runs"], native["runs"]):
        assert shown["source"] == "recorded" and shown["mark"].startswith("Recorded, not live")
        assert shown["ids"] == r["ids"] == n["ids"]
        assert shown["bytes"] == r["result"]["cache_bytes"] == n["result"]["cache_bytes"]
        assert shown["mapTokens"] == n["map"]["tokens"]
    assert browser.blocked == []


def test_the_lesson_runs_live_as_the_native_host(browser, LES, native, capsys):
    """Run the lesson: every run's tokens and bytes equal the native host's; the answers'
    digits are coloured by origin (the full cache's all from the asked fact)."""
    page = browser.page
    page.click(f'button[data-lesson="{LES["id"]}"]')
    err_sel = f'.lesson[data-lesson="{LES["id"]}"] .lesson-status.error'
    page.wait_for_function(f"document.getElementById('lesson-live').dataset.done === '{LES['id']}' || "
                           f"document.querySelector('{err_sel}')", timeout=RUN_TIMEOUT_MS, polling=500)
    err = page.evaluate(f"document.querySelector('{err_sel}')?.textContent")
    assert err is None, err
    got = panels(page, LES)
    for shown, n, spec in zip(got, native["runs"], LES["runs"]):
        assert shown["source"] == "live" and shown["mark"] == ""
        assert shown["ids"] == n["ids"], spec["label"]
        assert shown["bytes"] == n["result"]["cache_bytes"], spec["label"]
        assert shown["state"] == ("right" if n["correct"] else "crossover" if n["crossover"] else "wrong")
    assert got[0]["digits"] == ["from-asked"] * len(native["item"]["code"])  # the full cache answers
    with capsys.disabled():
        print("\nlesson " + LES["id"] + " live in Chromium, s per run: " +
              ", ".join(f"{s['label']} {g['seconds']:.1f}" for s, g in zip(LES["runs"], got)))
    assert browser.blocked == []
