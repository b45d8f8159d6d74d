"""The chat panel: turns on one cache, as a person types them, equal to the native
conversation; 20 chat-and-reset cycles leave the store's heap where the first left it; a
turn that would pass the context is refused in words and loses nothing."""

from __future__ import annotations

import pytest

from kvlab.conversation import Conversation
from kvlab.engine import Request

TURNS = ["What is the capital of France?", "And of Italy?", "Which of the two is bigger?"]
N = 12
RUN_TIMEOUT_MS = 300_000


@pytest.fixture
def page(browser):
    p = browser.page
    p.evaluate("kvlab.reset()")  # a new conversation; the Techniques panel is at the full cache
    p.fill("#chat-max", str(N))
    yield p
    p.evaluate("kvlab.reset()")


def send(page, message: str) -> None:
    turns = int(page.evaluate("document.getElementById('chat-card').dataset.turns || '0'"))
    page.fill("#chat-message", message)
    page.click("#chat-send")
    page.wait_for_function(f"Number(document.getElementById('chat-card').dataset.turns) > {turns} || "
                           "document.querySelector('#chat-status.error')", timeout=RUN_TIMEOUT_MS, polling=200)


def test_three_turns_keep_the_cache_as_native(page, engine, browser):
    native = Conversation(engine, {})
    for i, msg in enumerate(TURNS):
        send(page, msg)
        assert page.evaluate("document.querySelector('#chat-status.error')") is None
        want = native.turn(msg, Request(prompt=msg, max_new_tokens=N))
        got = page.evaluate(f"""(() => {{ const b = document.querySelector('#chat-log .bubble.model[data-turn="{i}"]');
            return {{ids: b.dataset.ids.split(',').map(Number), text: b.querySelector('.said').textContent,
                     figures: b.querySelector('.turn-figures').textContent}}; }})()""")
        assert got["ids"] == want["ids"] and got["text"] == want["text"]
        # only the new turn was read, from where the cache ended
        assert f"read {len(want['prompt_ids'])} new tokens from position {want['read_from']}" in got["figures"]
    # the main meter followed the conversation: it shows the tokens the cache holds now
    assert page.text_content("#stat-tokens").replace(",", "") == str(want["tokens_cached"])
    assert browser.blocked == []


def test_a_turn_past_the_context_loses_nothing(page, engine):
    send(page, TURNS[0])
    # a reply that would fit after this message alone, not after the conversation so far
    n = engine.config["context"] - len(engine.prompt_ids(Request(prompt=TURNS[1], chat=True))) + 1
    page.fill("#chat-max", str(n))
    send(page, TURNS[1])
    assert "the conversation holds" in page.text_content("#chat-status")
    assert page.input_value("#chat-message") == TURNS[1]  # the message is kept
    assert page.evaluate("document.querySelectorAll('#chat-log .bubble').length") == 2
    page.fill("#chat-max", str(N))
    send(page, TURNS[1])
    assert page.evaluate("document.getElementById('chat-card').dataset.turns") == "2"


def test_chat_and_reset_cycles_do_not_grow_the_heap(page):
    """20 cycles of two turns and a reset: the store's heap after the first is its heap after all."""
    heaps = page.evaluate("""async (n) => {
        const heaps = [];
        for (let i = 0; i < 20; i++) {
            await kvlab.chat({message: 'Tell me a fact about cats.', new: true, maxNewTokens: n});
            await kvlab.chat({message: 'And one about dogs?', maxNewTokens: n});
            await kvlab.reset();
            heaps.push(kvlab._host.exports.kv_heap_bytes());
        }
        return heaps;
    }""", 8)
    assert len(heaps) == 20 and heaps[0] > 0
    assert heaps[-1] == heaps[0], heaps


def test_the_cache_map_labels_the_whole_conversation(page, engine):
    """With the map on, a later turn's first event names every position the conversation
    has read (the earlier turns' included), so the map's prompt | reply line sits right."""
    page.evaluate("""() => { window.__chatEvents = [];
        window.addEventListener('kvlab:token', e => { if (e.detail.turn !== undefined) window.__chatEvents.push(e.detail); }); }""")
    r0 = page.evaluate("kvlab.chat({message: 'Hi there.', new: true, maxNewTokens: 6, cacheMap: true})")
    r1 = page.evaluate("kvlab.chat({message: 'And then?', maxNewTokens: 6, cacheMap: true})")
    first = [e for e in page.evaluate("window.__chatEvents") if e["turn"] == 1 and e["index"] == 0][0]
    texts = first["prompt_tokens"]
    assert len(texts) == r1["read_from"] + len(r1["prompt_ids"])
    tok = engine.tokenizer
    history = r0["prompt_ids"] + r0["ids"][:-1] + r1["prompt_ids"]
    assert texts == [tok.token_bytes(t).decode("utf-8", errors="replace") for t in history]


def test_the_stop_button_stops_a_chat_turn(page):
    """Stop (the Prompt card's button) ends any panel's run, here a chat turn, after the
    current token: its reply is cut short, stop_reason "stopped"."""
    # not awaited here (evaluate would wait for a returned promise): the turn runs on
    page.evaluate("() => { window.__turn = kvlab.chat({message: 'Write a long story about a cat.', new: true, "
                  "maxNewTokens: 400}); }")
    page.wait_for_function("!document.getElementById('stop').disabled", timeout=RUN_TIMEOUT_MS)
    page.click("#stop")
    res = page.evaluate("window.__turn")
    assert res["stop_reason"] == "stopped" and len(res["ids"]) < 400
    page.wait_for_function("document.getElementById('stop').disabled && !document.getElementById('generate').disabled")
