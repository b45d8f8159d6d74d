"""SmolLM2's tokenizer in pure Python: GPT-2 byte-level BPE over the "smollm" pre-tokenizer.

Reads the builder's ``tokenizer.json`` (format ``kvlab-bpe-1``, see
``builder/tokenizer_data.py``). Encoding, per text:

1. control tokens (``<|im_start|>`` …) are cut out verbatim (unless ``allow_special=False``);
2. each stretch between them is split into pieces (``kvlab.pretokenize``);
3. each piece's UTF-8 bytes are mapped to GPT-2's 256 printable stand-in characters;
4. BPE merges the lowest-ranked adjacent pair until none is left; the symbols are
   token strings, looked up in the vocabulary. A per-piece cache makes repeated
   words (most of any text) a dictionary hit.

Decoding maps each token back to its bytes and decodes UTF-8 with ``errors="replace"``;
``TokenDecoder`` does the same incrementally for streamed tokens, holding back a
character whose bytes are split across tokens. Checked id for id against HF
``tokenizers`` and llama.cpp on real text (tests/kvlab/test_tokenizer.py).
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Iterable, Iterator

from .pretokenize import pretokenize

__all__ = ["Tokenizer", "TokenDecoder", "byte_to_unicode"]

FORMAT = "kvlab-bpe-1"

# ---------------------------------------------------------------- GPT-2's byte ↔ character map


def byte_to_unicode() -> list[str]:
    """GPT-2's map: byte value → a printable character standing for it (256 entries).

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space,
    0x7F-0xA0, 0xAD) get U+0100 onwards, in byte order, e.g. space → "Ġ", "\\n" → "Ċ".
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


_BYTE_TO_CHAR = byte_to_unicode()
# For str.translate: Latin-1 decoded bytes (char code = byte value) → stand-in chars, and back.
_ENCODE_BYTES = {b: c for b, c in enumerate(_BYTE_TO_CHAR)}
_DECODE_CHARS = {ord(c): b for b, c in enumerate(_BYTE_TO_CHAR)}


# ---------------------------------------------------------------- the tokenizer


class Tokenizer:
    """Encode text to SmolLM2 token ids and back. Build with ``from_json`` / ``from_file``."""

    #: the per-piece cache is cleared when it grows past this many pieces (memory bound)
    CACHE_LIMIT = 200_000

    def __init__(self, data: dict):
        if data.get("format") != FORMAT or data.get("pre") != "smollm":
            raise ValueError(f"not a {FORMAT}/smollm tokenizer file "
                             f"(format={data.get('format')!r}, pre={data.get('pre')!r})")
        self.vocab: list[str] = data["vocab"]  # (vocab_size,) token strings by id
        self.ids: dict[str, int] = dict(zip(self.vocab, range(len(self.vocab))))
        # "left right" → rank, keyed by the file's own strings: building it is one C-level
        # zip (a third of the time tuple keys take), and only a cache miss pays a join.
        merges = data["merges"]
        self.ranks: dict[str, int] = dict(zip(merges, range(len(merges))))
        self.special: dict[str, int] = dict(data["special"])
        self.bos_id: int = data["bos_id"]
        self.eos_id: int = data["eos_id"]
        self.chat_template: str | None = data.get("chat_template")
        self.source: dict = data.get("source", {})
        # Longest first, so a special token that is a prefix of another cannot win.
        alts = sorted(self.special, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, alts))) if alts else None
        self._cache: dict[str, tuple[int, ...]] = {}
        self._bytes: dict[int, bytes] = {}  # id → bytes, filled on first decode of each id

    @classmethod
    def from_json(cls, text_or_dict: str | bytes | dict) -> "Tokenizer":
        data = text_or_dict if isinstance(text_or_dict, dict) else json.loads(text_or_dict)
        return cls(data)

    @classmethod
    def from_file(cls, path) -> "Tokenizer":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------ encode

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Token ids of ``text`` (no BOS is added: SmolLM2 does not use one).

        With ``allow_special`` the control tokens written in the text (``<|im_start|>``,
        ``<|im_end|>`` …) become their single ids, as the chat template needs; without
        it they are tokenized as the plain characters they are.
        """
        if not allow_special or self._special_re is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        start = 0
        # Each stretch between special tokens is pre-tokenized on its own (as in HF
        # tokenizers and llama.cpp): whitespace just before a special token ends a stretch.
        for m in self._special_re.finditer(text):
            if m.start() > start:
                ids += self._encode_ordinary(text[start : m.start()])
            ids.append(self.special[m.group()])
            start = m.end()
        if start < len(text):
            ids += self._encode_ordinary(text[start:])
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        cache, ids = self._cache, []
        for piece in pretokenize(text):
            toks = cache.get(piece)
            if toks is None:
                if len(cache) >= self.CACHE_LIMIT:
                    cache.clear()
                toks = cache[piece] = self._bpe(piece)
            ids += toks
        return ids

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """BPE on one piece: merge the best-ranked adjacent pair, all its occurrences, repeat.

        Merging every occurrence of the best pair at once gives the same result as HF's
        one-at-a-time priority queue, because every merge's parts are single bytes or
        products of earlier merges (checked for this vocabulary in the tests): a pair a
        merge creates always ranks after it, so the queue would take the remaining
        occurrences next anyway.
        """
        word = piece.encode("utf-8").decode("latin-1").translate(_ENCODE_BYTES)
        ids = self.ids
        if word in ids:  # whole piece is one token: the common case for words
            return (ids[word],)
        symbols = list(word)
        if not all(s in ids for s in symbols):
            # A byte the vocabulary lacks (21 of 256: six C0 controls such as U+0004 and
            # U+001D, and lead bytes no common UTF-8 character uses) has no token. HF
            # tokenizers (no unk token) drops it before merging, so its neighbours may
            # merge across the gap; we do the same. (llama.cpp drops it after merging:
            # the one place the two references disagree.)
            symbols = [s for s in symbols if s in ids]
        ranks = self.ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for i in range(len(symbols) - 1):
                r = ranks.get(symbols[i] + " " + symbols[i + 1])
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            left, right = symbols[best], symbols[best + 1]
            merged, i, n = [], 0, len(symbols)
            while i < n:
                if i < n - 1 and symbols[i] == left and symbols[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(ids[s] for s in symbols)

    # ------------------------------------------------------------ decode

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token ``token_id`` stands for (a control token: its text in UTF-8)."""
        b = self._bytes.get(token_id)
        if b is None:
            tok = self.vocab[token_id]
            if tok in self.special:
                b = tok.encode("utf-8")
            else:
                b = tok.translate(_DECODE_CHARS).encode("latin-1")
            self._bytes[token_id] = b
        return b

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        tb = self.token_bytes
        return b"".join([tb(i) for i in ids]).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "TokenDecoder":
        """A fresh incremental decoder: ``add(id) -> str`` per token, ``flush() -> str`` at the end."""
        return TokenDecoder(self)

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Yield text as ``ids`` arrive; the pieces join to ``decode(ids)``."""
        dec = self.stream_decoder()
        for i in ids:
            piece = dec.add(i)
            if piece:
                yield piece
        tail = dec.flush()
        if tail:
            yield tail


class TokenDecoder:
    """Incremental decode for streaming: holds back a character split across tokens.

    ``"".join(add(i) for i in ids) + flush() == tokenizer.decode(ids)``: the standard
    library's incremental UTF-8 decoder keeps an incomplete trailing sequence (up to
    3 bytes) for the next token and replaces invalid bytes exactly as ``bytes.decode``
    does.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """The new text that ``token_id`` completes ("" if it ends mid-character)."""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """The held-back bytes at the end of the stream (as U+FFFD if incomplete)."""
        return self._utf8.decode(b"", final=True)
