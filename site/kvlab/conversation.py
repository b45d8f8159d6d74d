"""Multi-turn chat on one compressed cache: each turn is appended to what the earlier turns
left in the store, never read again.

The first turn is a prompt like ``generate``'s with ``chat``: the template's system and
user messages and the assistant's header, read under the conversation's policy (one-shot
techniques compress after it, as after any prompt). Every later turn feeds only what is
new, as the chat template would continue the conversation::

    [the reply's last token, if it was not <|im_end|>] <|im_end|>\\n
    <|im_start|>user\\n{message}<|im_end|>\\n<|im_start|>assistant\\n

(a reply's last sampled token is never fed back by the decode loop, so the turn does it),
read as decode steps: rolling budgets keep capping the cache, quantized entries stay
quantized, and nothing of the earlier turns is read twice. A turn that would pass the
model's context is refused before anything runs, and the conversation stays as it was.

The policy and the sampling seed are the first turn's; a reset of the store (or any other
run on it) ends the conversation. ``python -m kvlab chat`` and the page's ``kvlab.chat``
run this same code.
"""

from __future__ import annotations

from dataclasses import replace

from .chat import render_chat
from .engine import InputError, Request

END, USER, ASSISTANT = "<|im_end|>\n", "<|im_start|>user\n", "<|im_start|>assistant\n"


class Conversation:
    """One conversation on ``engine``'s store. ``turn_steps`` is a generator of model runs
    (drive it with ``engine.drive`` / ``drive_async``); ``turn`` runs it natively."""

    def __init__(self, engine, policy=None, seed: int = 0) -> None:
        self.engine = engine
        self.pol = engine.apply(policy)  # validated now: a bad policy starts nothing
        self.seed = seed
        self.turns = 0
        self.last: int | None = None  # the last reply's last token, sampled but not fed
        self.epoch = None  # the store's reset count once the first turn reset it
        self.history: list[int] = []  # every token the cache has read, by position
        self.pending: list[int] = []  # the running turn's tokens (its map labels)
        self.broken = False  # a turn failed partway: the cache holds part of it

    @property
    def pos(self) -> int:
        """Positions the cache has read."""
        return len(self.history)

    def feed_ids(self, message: str) -> list[int]:
        """The tokens a turn with ``message`` reads (see the module's docstring)."""
        if not isinstance(message, str) or not message.strip():
            raise InputError("the message is empty: write something to say")
        tok = self.engine.tokenizer
        if self.turns == 0:
            return tok.encode(render_chat([{"role": "user", "content": message}]))
        head = [] if self.last is None or self.last in self.engine.stop_ids else [self.last]
        return head + tok.encode(END + USER + message + END + ASSISTANT)

    def check(self, message: str, req: Request) -> list[int]:
        """The turn's tokens, or an InputError (nothing run, the conversation unchanged)."""
        if self.broken:
            raise InputError("the last turn failed partway, so the cache holds part of it: start a new conversation")
        if self.turns and self.engine.store.resets != self.epoch:
            raise InputError("the cache was reset or used by another run since the last turn: start a new conversation")
        ids = self.feed_ids(message)
        req = replace(req, prompt=message, chat=True, policy=None)
        self.engine.check(req)  # max_new_tokens, sampling settings
        ctx, n = self.engine.config["context"], req.max_new_tokens
        if self.pos + len(ids) + n - 1 > ctx:
            raise InputError(
                f"this turn needs {len(ids)} tokens and up to {n} for the reply after the {self.pos} the "
                f"conversation holds: {self.pos + len(ids) + n - 1} positions, more than the model's context "
                f"of {ctx}; reset to start a new conversation (or ask for fewer new tokens)")
        return ids

    def turn_steps(self, message: str, req: Request | None = None, on_token=None, should_stop=None):
        """One turn: read ``message``, reply. Returns ``generate``'s result object with
        ``turn`` (0, 1, …), ``prompt_ids`` (the tokens this turn read) and ``read_from``
        (the position they started at: the earlier turns were not read again)."""
        req = req or Request(prompt=message)
        ids = self.check(message, req)
        engine, store = self.engine, self.engine.store
        if self.turns == 0:
            store.reset()
            self.pol.configure(store)
            store.seed(self.seed)
            self.epoch = store.resets
        t0 = engine.host.now_ms()
        start = self.pos
        self.pending = ids
        try:
            logits = yield from engine.runs(ids, start, self.pol, "prompt" if self.turns == 0 else "decode")
            req = replace(req, chat=True)
            res = yield from engine.decode(req, self.pol, logits, start + len(ids), t0, on_token, should_stop,
                                           event={"turn": self.turns})
        except BaseException:
            self.broken = True  # whatever the cache holds now, it is not a whole turn
            raise
        # the reply's tokens but the last were fed: the cache holds positions up to here
        self.history += ids + res["ids"][:-1]
        self.pending = []
        self.last = res["ids"][-1]
        res = {"turn": self.turns, "read_from": start, "prompt_ids": ids, **res}
        self.turns += 1
        return res

    def turn(self, message: str, req: Request | None = None, on_token=None, should_stop=None) -> dict:
        return self.engine.drive(self.turn_steps(message, req, on_token, should_stop))
