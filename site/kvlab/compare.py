"""Compare: one prompt under two policies, A and B, run one after the other on the one store.

Three passes, one generator of model runs (both hosts drive it, as ``Engine.steps``):

    A   generates under policy A (``Engine.steps``); the logits each of its tokens was
        chosen from are kept in scratch slots of the store: (n, vocab) f32
    B   generates under policy B: its own text, meter and speed
    B|A reads the prompt under B again and then A's tokens, teacher-forced: at A's every
        generated position j, B's logits are compared with A's kept ones in wasm
        (``kv_logit_stats``): KL(A ‖ B) in nats and whether both put the same token first

So ``kld[j]`` and ``top1[j]`` say how B's cache changes the model's next-token distribution
at exactly the positions A produced, even after B's own text went elsewhere
(``first_divergence``). The saving and the speed are each pass's own, measured on the store
(``ratios``: A over B, so a bigger number means B holds less or runs faster).

``python -m kvlab compare --prompt … --policy-a JSON --policy-b JSON --json`` and the page's
``kvlab.compare({prompt, policyA, policyB, …})`` return the same object.
"""

from __future__ import annotations

from dataclasses import replace

from .engine import InputError, Request
from .store import KVStore

#: at most this many generated tokens per side: A's logits are kept in the store, 4·vocab
#: bytes each (192 KiB for this model's 49,152), so 256 take 48 MiB of scratch
MAX_NEW_TOKENS = 256


def check(engine, req: Request, policy_a, policy_b) -> tuple[Request, Request]:
    """The two requests (the same prompt and settings, each its policy), validated before
    anything runs: a bad policy or prompt loses nothing."""
    n = req.max_new_tokens
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_NEW_TOKENS:
        raise InputError(f"compare generates at most {MAX_NEW_TOKENS} tokens a side, got max_new_tokens={n}")
    engine.check(replace(req, policy=None))  # the prompt and the settings, once
    for side, policy in (("A", policy_a), ("B", policy_b)):
        try:
            engine.apply(policy)
        except ValueError as e:  # PolicyError: name the side
            raise type(e)(f"policy {side}: {e}") from None
    return replace(req, policy=policy_a), replace(req, policy=policy_b)


def comparison(engine, req: Request, policy_a=None, policy_b=None, on_token=None, should_stop=None):
    """The comparison as a generator of model runs; returns the compare object.
    ``on_token(side, event)`` gets each side's token events ("a", "b")."""
    req_a, req_b = check(engine, req, policy_a, policy_b)
    store, vocab = engine.store, engine.config["vocab"]
    scratch = out = 0
    try:
        scratch = store.alloc(4 * vocab * req.max_new_tokens)  # (n, vocab) f32: A's logits
        out = store.alloc(4 * KVStore.N_STATS)
        def keep(j: int, ptr: int) -> None:
            store.module.call("kv_memcpy", scratch + 4 * vocab * j, ptr, 4 * vocab)

        def sink(side: str):
            return None if on_token is None else (lambda ev: on_token(side, ev))

        a = yield from engine.steps(req_a, sink("a"), should_stop, on_logits=keep)
        b = yield from engine.steps(req_b, sink("b"), should_stop)
        kld, top1 = yield from _forced(engine, req_b, a["prompt_ids"], a["ids"], scratch, out, should_stop)
    finally:
        for ptr in (out, scratch):
            if ptr:
                store.free(ptr)
    res = result(a, b, kld, top1)
    # stopped (kvlab.stop): a side ended early, or B|A did not reach A's last token
    res["stopped"] = "stopped" in (a["stop_reason"], b["stop_reason"]) or len(kld) < len(a["ids"])
    return res


def _forced(engine, req_b: Request, prompt: list[int], tokens: list[int], scratch: int, out: int,
            should_stop=None):
    """B reads the prompt and A's tokens; at each of A's positions its logits against A's
    kept ones: (kld, top1) lists, one entry per token of A (fewer if stopped)."""
    store, vocab = engine.store, engine.config["vocab"]
    pol = engine.apply(req_b.policy)
    store.reset()
    pol.configure(store)
    logits = yield from engine.runs(prompt, 0, pol, "prompt", question=len(engine.question_ids(req_b)))
    kld, top1 = [], []
    for j, tok in enumerate(tokens):
        s = store.logit_stats(scratch + 4 * vocab * j, logits, tok, out)  # ref = A, cmp = B
        kld.append(round(s[2], 6))  # clamped at ≥ 0 in wasm
        top1.append(int(s[3]))
        if j + 1 < len(tokens):
            if should_stop is not None and should_stop():
                break
            logits = yield from engine.runs([tok], len(prompt) + j, pol, "decode")
    return kld, top1


def result(a: dict, b: dict, kld: list[float], top1: list[int]) -> dict:
    """The compare object: both runs (as ``generate`` returns them, the prompt's ids once),
    the per-position KL and top-1 agreement, where the texts part, and the ratios."""
    n = min(len(a["ids"]), len(b["ids"]))
    diverge = next((j for j in range(n) if a["ids"][j] != b["ids"][j]), None)
    if diverge is None and len(a["ids"]) != len(b["ids"]):
        diverge = n

    def ratio(x, y):
        return round(x / y, 4) if x and y else None

    return {
        "prompt_ids": a["prompt_ids"],
        "a": {k: v for k, v in a.items() if k != "prompt_ids"},
        "b": {k: v for k, v in b.items() if k != "prompt_ids"},
        "kld": kld,
        "top1": top1,
        "kld_mean": round(sum(kld) / len(kld), 6) if kld else None,
        "top1_agreement": round(sum(top1) / len(top1), 6) if top1 else None,
        "first_divergence": diverge,
        "ratios": {
            # A's over B's: > 1 means B holds less / runs faster
            "cache_bytes": ratio(a["cache_bytes"], b["cache_bytes"]),
            "ms_per_token": ratio(a["ms_per_token"], b["ms_per_token"]),
            "prefill_ms": ratio(a["prefill_ms"], b["prefill_ms"]),
        },
    }


def compare(engine, req: Request, policy_a=None, policy_b=None, on_token=None, should_stop=None) -> dict:
    """Run a comparison on a synchronous host (native)."""
    return engine.drive(comparison(engine, req, policy_a, policy_b, on_token, should_stop))


async def compare_async(engine, req: Request, policy_a=None, policy_b=None, on_token=None, should_stop=None) -> dict:
    """``compare`` for hosts whose model runs asynchronously (the page)."""
    return await engine.drive_async(comparison(engine, req, policy_a, policy_b, on_token, should_stop))
