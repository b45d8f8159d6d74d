"""The presenter view: ?lesson=ID opens that lesson full screen, the keyboard walks the
lessons and the URL follows, Esc leaves, an unknown id says so; a 1280×720 screenshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IDS = [les["id"] for les in json.loads((REPO / "site" / "static" / "lessons.json").read_text())["lessons"]]


@pytest.fixture
def page(browser):
    p = browser.page
    p.set_viewport_size({"width": 1280, "height": 720})
    yield p
    browser.open()  # the lab without ?lesson, booted, for the tests after


def open_at(page, browser, query: str) -> None:
    page.goto(browser.base_url + "/" + query)
    page.wait_for_selector("#presenter[data-ready]", state="attached")


def shown(page) -> dict:
    return page.evaluate("""() => { const v = document.getElementById('presenter');
        return {hidden: v.hidden, lesson: v.dataset.lesson, search: location.search,
                boxes: v.querySelectorAll('.lesson').length, title: v.querySelector('.lesson > h3')?.textContent}; }""")


def test_keyboard_walks_the_lessons_and_the_url_follows(page, browser):
    open_at(page, browser, f"?lesson={IDS[0]}")
    s = shown(page)
    assert not s["hidden"] and s["lesson"] == IDS[0] and s["boxes"] == 1
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(REPO / "test-artifacts" / "presenter-1280x720.png"))
    for i in range(1, len(IDS)):
        page.keyboard.press("ArrowRight")
        s = shown(page)
        assert s["lesson"] == IDS[i] and s["search"] == f"?lesson={IDS[i]}"
    page.keyboard.press("ArrowRight")  # past the last: stays
    assert shown(page)["lesson"] == IDS[-1]
    page.keyboard.press("Home")
    assert shown(page)["lesson"] == IDS[0]
    page.keyboard.press("PageDown")
    assert shown(page)["lesson"] == IDS[1]
    page.keyboard.press("ArrowLeft")
    assert shown(page)["lesson"] == IDS[0]
    page.keyboard.press("Escape")
    s = shown(page)
    assert s["hidden"] and s["search"] == ""
    # every lesson box is back in the page's Lessons card, in order
    assert page.evaluate("[...document.querySelectorAll('#lesson-live > .lesson')].map(b => b.dataset.lesson)") == IDS
    assert browser.blocked == []


def test_the_present_button_opens_its_lesson(page, browser):
    open_at(page, browser, "")
    page.click(f'button[data-present="{IDS[-1]}"]')
    s = shown(page)
    assert not s["hidden"] and s["lesson"] == IDS[-1] and s["search"] == f"?lesson={IDS[-1]}"


def test_an_unknown_lesson_is_named(page, browser):
    open_at(page, browser, "?lesson=nope")
    assert f'unknown lesson "nope"; known: {", ".join(IDS)}' in page.text_content("#presenter")
    page.keyboard.press("Escape")
    assert shown(page)["hidden"]
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=180_000)  # the lab still boots
