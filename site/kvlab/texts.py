"""Real text for the quality harness: CPython's own reference documentation.

No text here is written by this project: perplexities and needle fillers use the topics of
``pydoc_data.topics`` (the text behind ``help('topic')``), which ship with CPython and with
Pyodide's standard library alike, so the same code finds them on both hosts. Topics are
taken in sorted order (deterministic); each text used is reported with the sha256 of its
UTF-8 bytes (the *text*, not the file: Python versions differ, and a hash names exactly
what was read).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SOURCE = "pydoc_data.topics (CPython reference documentation)"


@dataclass(frozen=True)
class Text:
    name: str  # e.g. "pydoc_data.topics#assignment"
    sha256: str  # of text.encode("utf-8")
    text: str

    def ref(self) -> dict:
        """What a result records about the text: its name and hash."""
        return {"name": self.name, "sha256": self.sha256}


def topics() -> list[Text]:
    """Every reference-documentation topic, in sorted order of its name."""
    from pydoc_data.topics import topics as t

    return [Text(f"pydoc_data.topics#{k}", hashlib.sha256(t[k].encode("utf-8")).hexdigest(), t[k])
            for k in sorted(t)]


def token_stream(tokenizer, n: int, start: int = 0, sep: str = "\n\n") -> tuple[list[int], list[dict]]:
    """At least n token ids of the topics joined by ``sep``, starting at topic ``start``
    (wrapping around); returns (ids[:n], the texts used as name/sha256 records)."""
    all_topics = topics()
    ids: list[int] = []
    used: list[dict] = []
    i = start % len(all_topics)
    while len(ids) < n:
        if len(used) >= len(all_topics):
            raise ValueError(f"the reference documentation holds fewer than {n} tokens")
        t = all_topics[i]
        ids += tokenizer.encode((sep if used else "") + t.text)
        used.append(t.ref())
        i = (i + 1) % len(all_topics)
    return ids[:n], used


# ---------------------------------------------------------------------------------------
# The profiler's texts: four kinds of real text from the standard library
# ---------------------------------------------------------------------------------------

#: (kind, source): a file of CPython's standard library, or a reference-documentation topic.
#: Diverse on purpose: a head whose keys look alike across prose, code, reference
#: documentation and a changelog list is collapsed for real, not just on one genre.
PROFILE_SOURCES = (
    ("prose", "stdlib:LICENSE.txt"),  # the history of the software, in sentences
    ("code", "stdlib:textwrap.py"),  # a whole module's source
    ("reference", "pydoc_data.topics#formatstrings"),  # the format mini-language
    ("list", "stdlib:idlelib/NEWS.txt"),  # a changelog: one entry per item
)
PROFILE_CHARS = 12000  # the start of each text: far more than the profiler's tokens


def profile_texts(chars: int = PROFILE_CHARS) -> list[dict]:
    """The profiler's texts as ``{"kind", "name", "sha256", "text"}`` (the first ``chars``
    characters of each source). Read natively: the builder writes them into the site, so
    the page profiles exactly the same text."""
    import sysconfig
    from pathlib import Path

    out = []
    for kind, source in PROFILE_SOURCES:
        if source.startswith("stdlib:"):
            text = (Path(sysconfig.get_paths()["stdlib"]) / source[7:]).read_text(encoding="utf-8")
        else:
            from pydoc_data.topics import topics as t

            text = t[source.split("#", 1)[1]]
        text = text[:chars]
        out.append({"kind": kind, "name": source, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                    "text": text})
    return out
