"""Multi-turn chat on one cache (kvlab.conversation): later turns are appended, never read
again; the result is what one prompt of the whole conversation gives; rolling budgets
keep capping, quantized entries stay quantized; bad turns lose nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvlab.chat import render_chat
from kvlab.conversation import Conversation
from kvlab.engine import InputError, Request

TURNS = ["What is the capital of France?", "And of Italy?", "Which of the two is bigger?"]
N = 10


def req(n: int = N) -> Request:
    return Request(prompt="-", max_new_tokens=n)


def test_turns_are_appended_not_read_again(engine):
    """Each turn reads only its own tokens, from where the last reply ended; tokens cached
    grow by exactly what each turn read and replied."""
    conv = Conversation(engine)
    cached = 0
    for i, msg in enumerate(TURNS):
        res = conv.turn(msg, req())
        assert res["turn"] == i and res["read_from"] == cached
        grown = len(res["prompt_ids"]) + len(res["ids"]) - 1
        assert res["tokens_cached"] == cached + grown
        if i:  # a later turn starts with the reply's end and the next user message, not the system prompt
            assert len(res["prompt_ids"]) < 30
            assert msg in engine.tokenizer.decode(res["prompt_ids"])
        cached = res["tokens_cached"]


def test_a_conversation_reads_as_one_prompt(engine):
    """Turn 2 under the full cache gives the tokens that one prompt of the whole
    conversation (the chat template rendered anew, read at once) gives."""
    conv = Conversation(engine)
    first = conv.turn(TURNS[0], req())
    second = conv.turn(TURNS[1], req())
    whole_ids = first["prompt_ids"] + first["ids"][:-1] + second["prompt_ids"]
    if first["stop_reason"] == "eos":  # the template's text of the same conversation
        text = render_chat([{"role": "user", "content": TURNS[0]}, {"role": "assistant", "content": first["text"]},
                            {"role": "user", "content": TURNS[1]}])
        assert engine.tokenizer.decode(whole_ids) == text
    alone = engine.generate(Request(prompt=engine.tokenizer.decode(whole_ids), max_new_tokens=N))
    assert alone["prompt_ids"] == whole_ids
    assert alone["ids"] == second["ids"]


def test_a_rolling_budget_keeps_capping(engine):
    conv = Conversation(engine, {"streaming": {"budget": 32, "sinks": 4}})
    for msg in TURNS:
        res = conv.turn(msg, req())
        assert all(k <= 32 for layer in res["kept"] for k in layer)
    assert res["tokens_cached"] > 32


def test_quantized_entries_stay_quantized(engine):
    """q4 keys and values: the bytes held are the q4 rows of every cached token, turn after turn."""
    conv = Conversation(engine, {"quant": {"k_bits": 4, "v_bits": 4}})
    for msg in TURNS[:2]:
        res = conv.turn(msg, req())
        full = res["fp32_bytes"]
        assert res["savings"]["quantization"] > 6 and res["cache_bytes"] < full / 6


def test_bad_turns_lose_nothing(engine):
    conv = Conversation(engine)
    res = conv.turn(TURNS[0], req())
    before = engine.meter()
    with pytest.raises(InputError, match="the message is empty"):
        conv.turn("   ", req())
    # a reply that would fit after the message alone, but not after the conversation so far:
    # refused by the conversation's own check (the engine's passes)
    alone = len(engine.prompt_ids(Request(prompt=TURNS[1], chat=True)))
    n = engine.config["context"] - alone + 1
    engine.check(Request(prompt=TURNS[1], chat=True, max_new_tokens=n))
    with pytest.raises(InputError, match=f"after the {res['tokens_cached']} the conversation holds"):
        conv.turn(TURNS[1], req(n))
    assert engine.meter() == before and conv.turns == 1
    nxt = conv.turn(TURNS[1], req())  # the conversation goes on from where it was
    assert nxt["read_from"] == res["tokens_cached"]
    engine.generate(Request(prompt="Hello", max_new_tokens=2))  # another run empties the cache
    with pytest.raises(InputError, match="start a new conversation"):
        conv.turn(TURNS[2], req())


def test_cli_chat_reads_turns_from_stdin(bundle):
    p = subprocess.run([sys.executable, "-m", "kvlab", "--artifacts", str(bundle), "chat", "--max-new-tokens", "8",
                        "--json"], input="\n".join(TURNS[:2]) + "\n", capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["turn"] for x in lines] == [0, 1]
    assert lines[1]["read_from"] == lines[0]["tokens_cached"]
    bad = subprocess.run([sys.executable, "-m", "kvlab", "chat", "--policy", '{"quant": {"k_bits": 5}}'],
                         input="hi\n", capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "k_bits" in bad.stderr
