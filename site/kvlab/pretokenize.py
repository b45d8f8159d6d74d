"""SmolLM2's pre-tokenizer ("smollm"): text → the pieces that BPE then encodes one by one.

It is HF tokenizers' ``Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]``
(and llama.cpp's ``smollm`` pre-type): every number character stands alone, and
the rest is split by the GPT-2 pattern

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

Python's ``re`` has no ``\\p{L}`` / ``\\p{N}`` (and Pyodide has no ``regex`` package offline),
so the split runs in two steps, both at C speed:

1. ``str.translate`` maps every character to a one-character *class* (its Unicode
   category from ``unicodedata``, looked up once per distinct character and cached):
   ASCII letters, the apostrophe and the space stay themselves (the contractions and
   the optional leading space need them), other letters become ``L``, numbers ``0``,
   other whitespace ``\\t``, everything else ``!``. (The class symbols of non-letters
   are not letters, so an ASCII letter in the text can never pass for one.)
2. An ordinary ``re`` pattern over that class string, with the GPT-2 alternatives in
   the same order, gives the spans; the pieces are the same spans of the text.

Matched against the references (tests/kvlab/test_tokenizer.py): ``\\p{N}`` is Nd, Nl and
No (so '²', 'Ⅻ', '½', '٣' stand alone too); ``\\s`` is Unicode White_Space, which is
``str.isspace()`` minus U+001C..U+001F (Python counts those separators as space,
the references do not); combining marks (Mn, Mc, Me) are not letters, so they
split from the letter before them. Letters and numbers newer than this Python's
``unicodedata`` come from a small table (``_NEWER``), so a Python 3.11 host and
Pyodide's 3.14 split alike, and like the reference, on every code point.
"""

from __future__ import annotations

import bisect
import re
import unicodedata

__all__ = ["pretokenize", "char_class"]

# ---------------------------------------------------------------- character classes

_NUMBER = frozenset(("Nd", "Nl", "No"))  # \p{N}

# Letters ("L") and numbers ("0") newer than Unicode 14.0, as (first, last, class). A
# Python with an older unicodedata (3.11: Unicode 14.0; 3.12: 15.0; 3.13: 15.1; Pyodide's
# 3.14: 16.0) calls them unassigned (Cn); this keeps every host splitting alike. Found by
# probing HF tokenizers 0.23 on every code point. (Its digit split already knows the
# Unicode 17 digits U+11DE0.. and U+16FF4..; "0" = isolated, exactly what that does.)
_NEWER = (
    (0x1C89, 0x1C8A, "L"), (0xA7CB, 0xA7CD, "L"), (0xA7DA, 0xA7DC, "L"),
    (0x105C0, 0x105F3, "L"), (0x10D40, 0x10D49, "0"), (0x10D4A, 0x10D65, "L"),
    (0x10D6F, 0x10D85, "L"), (0x10EC2, 0x10EC4, "L"), (0x1123F, 0x11240, "L"),
    (0x11380, 0x11389, "L"), (0x1138B, 0x1138B, "L"), (0x1138E, 0x1138E, "L"),
    (0x11390, 0x113B5, "L"), (0x113B7, 0x113B7, "L"), (0x113D1, 0x113D1, "L"),
    (0x113D3, 0x113D3, "L"), (0x116D0, 0x116E3, "0"), (0x11BC0, 0x11BE0, "L"),
    (0x11BF0, 0x11BF9, "0"), (0x11DE0, 0x11DE9, "0"), (0x11F02, 0x11F02, "L"),
    (0x11F04, 0x11F10, "L"), (0x11F12, 0x11F33, "L"), (0x11F50, 0x11F59, "0"),
    (0x1342F, 0x1342F, "L"), (0x13441, 0x13446, "L"), (0x13460, 0x143FA, "L"),
    (0x16100, 0x1611D, "L"), (0x16130, 0x16139, "0"), (0x16D40, 0x16D6C, "L"),
    (0x16D70, 0x16D79, "0"), (0x16FF4, 0x16FF6, "0"), (0x18CFF, 0x18CFF, "L"),
    (0x1B132, 0x1B132, "L"), (0x1B155, 0x1B155, "L"), (0x1CCF0, 0x1CCF9, "0"),
    (0x1D2C0, 0x1D2D3, "0"), (0x1DF25, 0x1DF2A, "L"), (0x1E030, 0x1E06D, "L"),
    (0x1E4D0, 0x1E4EB, "L"), (0x1E4F0, 0x1E4F9, "0"), (0x1E5D0, 0x1E5ED, "L"),
    (0x1E5F0, 0x1E5F0, "L"), (0x1E5F1, 0x1E5FA, "0"), (0x2B739, 0x2B739, "L"),
    (0x2EBF0, 0x2EE5D, "L"), (0x31350, 0x323AF, "L"),
)
_NEWER_STARTS = [first for first, _, _ in _NEWER]


def char_class(ch: str) -> str:
    """The class of one character: "L" letter, "0" number, "\\t" whitespace, "!" other."""
    cat = unicodedata.category(ch)
    if cat == "Cn":  # unassigned for this Python: maybe a newer letter or number
        i = bisect.bisect_right(_NEWER_STARTS, ord(ch)) - 1
        if i >= 0 and ord(ch) <= _NEWER[i][1]:
            return _NEWER[i][2]
        return "!"
    if cat[0] == "L":
        return "L"
    if cat in _NUMBER:
        return "0"
    if ch.isspace() and not "\x1c" <= ch <= "\x1f":
        return "\t"
    return "!"


class _ClassTable(dict):
    """ord(char) → class symbol, for ``str.translate``; fills itself on first sight."""

    def __missing__(self, cp: int) -> str:
        k = self[cp] = char_class(chr(cp))
        return k


def _ascii_classes() -> _ClassTable:
    t = _ClassTable()
    for cp in range(128):
        ch = chr(cp)
        if ch.isascii() and ch.isalpha() or ch == "'" or ch == " ":
            t[cp] = ch  # kept as is: the contractions and " ?" look at the real characters
        else:
            t[cp] = char_class(ch)  # U+001C..U+001F come out "!" (not White_Space)
    return t


_CLASSES = _ascii_classes()

# ---------------------------------------------------------------- the split

# The GPT-2 alternatives, in order, over classes. Letters: [A-Za-z] (non-ASCII ones
# are "L"). Whitespace: the space or "\t". Others: "!" or the apostrophe (when it
# does not start a contraction). Numbers never join: Digits() cut the text around
# each one first, so a number is one piece, a space before it is not glued to it,
# and a whitespace run just before a number ends its segment (hence "0" in the
# lookahead).
_SPLIT = re.compile(
    r"'(?:[stmd]|re|ve|ll)"  # 's 't 'm 'd 're 've 'll (case-sensitive, as in GPT-2)
    r"| ?[A-Za-z]+"  # ' ?\p{L}+'
    r"|0"  # ' ?\p{N}+' after Digits(individual_digits=True)
    r"| ?[!']+"  # ' ?[^\s\p{L}\p{N}]+'
    r"|[ \t]+(?=[ \t0]|\Z)"  # '\s+(?!\S)': a run, less its last char if a non-space follows
    r"|[ \t]+"  # '\s+': the lone whitespace char left before a non-space
)


def pretokenize(text: str) -> list[str]:
    """Split ``text`` (no special tokens in it) into pre-tokenizer pieces, in order.

    "Hello  world 42\\n" → ["Hello", " ", " world", " ", "4", "2", "\\n"]
    """
    classes = text.translate(_CLASSES)  # same length as text: one class symbol per char
    # Every class symbol starts some alternative, so the matches tile the whole string
    # back to back: the match lengths alone locate the pieces. (findall + slicing is
    # twice as fast as finditer's match objects.)
    pieces, pos = [], 0
    for m in _SPLIT.findall(classes):
        end = pos + len(m)
        pieces.append(text[pos:end])
        pos = end
    if pos != len(text):  # cannot happen; a guard against a future edit of _SPLIT
        raise AssertionError("pretokenize: the split does not cover the text")
    return pieces
