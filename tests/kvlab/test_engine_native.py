"""The engine on the native host: streaming, stopping, sampling, hosts agree, errors lose nothing."""

from __future__ import annotations

import pytest

from kvlab import engine as engine_mod
from kvlab.engine import Engine, InputError, Request
from kvlab.techniques import PolicyError

pytestmark = pytest.mark.slow

Q4 = {"quant": {"k_bits": 4, "v_bits": 4}}


def test_events_stream_the_text_and_the_bytes(engine):
    events = []
    res = engine.generate(Request(prompt="Once upon a time", max_new_tokens=12, ignore_eos=True,
                                  policy=Q4), on_token=events.append)
    assert [e["id"] for e in events] == res["ids"]
    assert "".join(e["text"] for e in events) == res["text"]
    assert res["text"] == engine.tokenizer.decode(res["ids"])
    sizes = [e["cache_bytes"] for e in events]
    assert sizes == res["bytes_per_step"] and sizes == sorted(sizes) and sizes[0] > 0
    assert all(len(e["layer_bytes"]) == 30 for e in events)
    assert events[-1]["tokens_cached"] == len(res["prompt_ids"]) + len(res["ids"]) - 1


def test_should_stop_stops(engine):
    n = []
    res = engine.generate(Request(prompt="Count: one, two,", max_new_tokens=50, ignore_eos=True),
                          on_token=n.append, should_stop=lambda: len(n) >= 3)
    assert res["stop_reason"] == "stopped" and len(res["ids"]) == 3


def test_chat_stops_at_end_of_turn(engine):
    res = engine.generate(Request(prompt="Say hello.", chat=True, max_new_tokens=200))
    assert res["stop_reason"] == "eos" and res["ids"][-1] == engine.tokenizer.eos_id
    assert "<|im_end|>" not in res["text"] and res["text"].strip()


def test_seeded_sampling_is_repeatable(engine):
    req = dict(prompt="The weather today", max_new_tokens=16, ignore_eos=True, temperature=0.9,
               top_k=50, top_p=0.95)
    a = engine.generate(Request(seed=7, **req))["ids"]
    b = engine.generate(Request(seed=7, **req))["ids"]
    c = engine.generate(Request(seed=8, **req))["ids"]
    assert a == b
    assert a != c


@pytest.mark.parametrize("policy", [{}, Q4, {"quant": {"k_bits": 8, "v_bits": 16}}])
def test_simd_and_scalar_stores_agree(engine, bundle, policy):
    from kvlab.host.native import NativeHost

    scalar = Engine(NativeHost(bundle, simd=False))
    assert scalar.host.variant == "scalar" and engine.host.variant == "simd"
    for req in (Request(prompt="def fib(n):", max_new_tokens=16, ignore_eos=True, policy=policy),
                Request(prompt="A list of fruits:", max_new_tokens=16, ignore_eos=True,
                        policy=policy, temperature=1.0, seed=3)):
        a, b = engine.generate(req), scalar.generate(req)
        assert a["ids"] == b["ids"] and a["cache_bytes"] == b["cache_bytes"]


def test_chunked_prefill_reads_the_same(engine, monkeypatch):
    import pydoc_data.topics as topics

    prompt = topics.topics["assert"] + topics.topics["assignment"][:3000]
    req = Request(prompt=prompt, max_new_tokens=8, ignore_eos=True, policy=Q4)
    one = engine.generate(req)
    assert len(one["prompt_ids"]) > engine_mod.PREFILL_CHUNK  # really chunked by default
    monkeypatch.setattr(engine_mod, "PREFILL_CHUNK", 97)
    other = engine.generate(req)
    assert other["ids"] == one["ids"] and other["cache_bytes"] == one["cache_bytes"]


@pytest.mark.parametrize(
    "bad",
    [
        dict(prompt=""),
        dict(prompt="hi", max_new_tokens=0),
        dict(prompt="hi", max_new_tokens=10**6),
        dict(prompt="hi", temperature=float("nan")),
        dict(prompt="hi", top_k=-1),
        dict(prompt="hi", seed=-1),
        dict(prompt="hi", policy={"quant": {"k_bits": 5}}),
        dict(prompt="hi", policy={"quant": {"v_format": "q1"}}),
        dict(prompt="word " * 8200),
    ],
)
def test_bad_requests_lose_nothing(engine, bad):
    before = engine.generate(Request(prompt="Keep me.", max_new_tokens=4, ignore_eos=True, policy=Q4))
    held = engine.store.bytes()
    with pytest.raises((InputError, PolicyError)):
        engine.generate(Request(**bad))
    assert engine.store.bytes() == held == before["cache_bytes"]
    again = engine.generate(Request(prompt="Keep me.", max_new_tokens=4, ignore_eos=True, policy=Q4))
    assert again["ids"] == before["ids"]


def test_a_policy_does_not_leak_into_the_next_request(engine):
    full = engine.generate(Request(prompt="Hello there", max_new_tokens=3, ignore_eos=True))
    engine.generate(Request(prompt="Hello there", max_new_tokens=3, ignore_eos=True, policy=Q4))
    again = engine.generate(Request(prompt="Hello there", max_new_tokens=3, ignore_eos=True))
    assert again["cache_bytes"] == full["cache_bytes"] == full["fp32_bytes"]


def test_the_context_edge_is_exact(engine):
    """A prompt and max_new_tokens that need exactly the model's 8,192 positions are taken;
    one position more is refused before anything runs (the last token is sampled, never fed)."""
    import pydoc_data.topics as topics

    ctx = engine.config["context"]
    text = "\n".join(topics.topics[k] for k in sorted(topics.topics))[:30000]
    n_prompt = len(engine.prompt_ids(Request(prompt=text)))
    assert 1 < n_prompt < ctx
    ids, _ = engine.check(Request(prompt=text, max_new_tokens=ctx - n_prompt + 1))
    assert len(ids) + (ctx - n_prompt + 1) - 1 == ctx
    with pytest.raises(InputError, match=f"more than the model's context of {ctx}"):
        engine.check(Request(prompt=text, max_new_tokens=ctx - n_prompt + 2))


def test_out_of_memory_is_a_clear_error_and_the_store_recovers(bundle):
    """A store capped below what a prompt needs: StoreError saying so, nothing half-held;
    lifted, the same engine generates as an uncapped one."""
    from kvlab.host.native import NativeHost
    from kvlab.store import StoreError

    e = Engine(NativeHost(bundle))
    e.store.set_limit(e.store.heap_bytes() + (2 << 20))  # 2 MiB more: far less than 600 tokens' fp32
    import pydoc_data.topics as topics

    with pytest.raises(StoreError, match="out of memory"):
        e.generate(Request(prompt=topics.topics["assert"] * 3, max_new_tokens=2))
    assert e.store.bytes() == 0 and e.store.tokens(-1) == 0
    e.store.set_limit(0)
    req = Request(prompt="Keep me.", max_new_tokens=4, ignore_eos=True)
    assert e.generate(req)["ids"] == Engine(NativeHost(bundle)).generate(req)["ids"]
