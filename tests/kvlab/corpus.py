"""Real text for tests and the quality harness: files that ship with CPython and installed packages.

No text here is written by this project: tokenizer checks and perplexities run on
text someone else wrote for another purpose. Every loader is deterministic (a fixed
list of files, a fixed order) and every text carries the sha256 of the file it came
from, so a result can name exactly the texts it used (``fingerprint``).

Sources (``SOURCES``):

    pydoc-topics   CPython's reference documentation (``pydoc_data/topics.py``), one text per topic
    stdlib-code    a fixed list of CPython standard-library modules, whole files
    dist-docs      METADATA / AUTHORS / LICENSE files of installed distributions (names
                   with accents, emoji in READMEs, Markdown and reStructuredText)
    unicode        package files full of non-ASCII: charset_normalizer's alphabets (CJK,
                   Cyrillic, Greek, Arabic, accented Latin), pygments' Tamil and Julia
                   lexers (combining vowel signs, math symbols), numpy's polynomial
                   printing tests (superscript and subscript digits), idna's UTS-46
                   table (many scripts, lone combining marks), jinja2's identifier
                   pattern, and pip's emoji table when pip is installed
    cjk-prose      CPython's ``test/cjkencodings/*-utf8.txt``: Chinese, Japanese and Korean
                   prose (present only where CPython's test package is installed)

A missing optional file is skipped, not an error: check ``texts()`` for what was found.
Import it as ``from tests.kvlab import corpus`` (pytest runs with ``--import-mode=importlib``);
``python tests/kvlab/corpus.py`` prints what each source holds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Text", "SOURCES", "texts", "lines", "sample_lines", "fingerprint"]


@dataclass(frozen=True)
class Text:
    source: str  # a key of SOURCES
    name: str  # e.g. "pydoc_data/topics.py#assignment", "textwrap.py", "idna-3.20:METADATA"
    path: str  # the file it came from
    sha256: str  # of that file's bytes
    text: str


# ---------------------------------------------------------------- where the files are

STDLIB = Path(sysconfig.get_paths()["stdlib"])

STDLIB_MODULES = (
    "textwrap.py", "heapq.py", "bisect.py", "shlex.py", "difflib.py", "fractions.py",
    "colorsys.py", "json/encoder.py", "json/decoder.py", "string.py", "calendar.py",
    "statistics.py", "argparse.py", "functools.py", "csv.py", "ipaddress.py",
)

# distribution name → files of it to read (those that exist are used)
DIST_FILES = {
    name: ("METADATA", "AUTHORS", "AUTHORS.txt", "LICENSE", "LICENSE.txt", "LICENSE.md")
    for name in (
        "charset-normalizer", "huggingface_hub", "idna", "tqdm", "tokenizers", "gguf",
        "hf-xet", "requests", "numpy", "urllib3", "httpx2", "truststore", "Pygments",
        "pip", "Jinja2", "hypothesis", "pytest", "filelock", "anyio", "typing_extensions",
    )
}

# (top-level package, path inside it)
UNICODE_FILES = (
    ("charset_normalizer", "constant.py"),
    ("pygments", "lexers/ezhil.py"),
    ("pygments", "lexers/_julia_builtins.py"),
    ("pygments", "lexers/julia.py"),
    ("numpy", "polynomial/tests/test_printing.py"),
    ("idna", "uts46data.py"),
    ("jinja2", "_identifier.py"),
    ("pip", "_vendor/rich/_emoji_codes.py"),
)

SOURCES = {
    "pydoc-topics": "CPython's reference documentation topics (pydoc_data/topics.py)",
    "stdlib-code": "CPython standard-library modules: " + ", ".join(STDLIB_MODULES),
    "dist-docs": "METADATA / AUTHORS / LICENSE files of installed distributions",
    "unicode": "non-ASCII-heavy package files: " + ", ".join(f"{p}/{f}" for p, f in UNICODE_FILES),
    "cjk-prose": "CPython's test/cjkencodings/*-utf8.txt (CJK prose)",
}


def _package_dir(package: str) -> Path | None:
    # find_spec of a top-level name locates it without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, data.decode("utf-8")


# ---------------------------------------------------------------- the loaders


def _pydoc_topics() -> list[Text]:
    path = STDLIB / "pydoc_data" / "topics.py"
    data, _ = _read(path)
    from pydoc_data.topics import topics  # the same file, as data (sorted below: stable)

    return [Text("pydoc-topics", f"pydoc_data/topics.py#{k}", str(path), _sha256(data), topics[k])
            for k in sorted(topics)]


def _stdlib_code() -> list[Text]:
    out = []
    for rel in STDLIB_MODULES:
        path = STDLIB / rel
        if path.is_file():
            data, text = _read(path)
            out.append(Text("stdlib-code", rel, str(path), _sha256(data), text))
    return out


def _dist_docs() -> list[Text]:
    out = []
    for name, files in DIST_FILES.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        # Licence files may sit in the .dist-info folder itself or in its licenses/ folder.
        wanted = {f: None for f in files}
        for f in dist.files or ():
            parts = f.parts
            if parts and parts[0].endswith(".dist-info") and f.name in wanted and wanted[f.name] is None:
                wanted[f.name] = f
        for fname in files:
            f = wanted[fname]
            if f is None:
                continue
            path = Path(dist.locate_file(f))
            if not path.is_file():
                continue
            try:
                data, text = _read(path)
            except UnicodeDecodeError:
                continue
            out.append(Text("dist-docs", f"{dist.metadata['Name']}-{dist.version}:{fname}",
                            str(path), _sha256(data), text))
    return out


def _unicode_files() -> list[Text]:
    out = []
    for package, rel in UNICODE_FILES:
        base = _package_dir(package)
        path = base / rel if base else None
        if path is None or not path.is_file():
            continue
        data, text = _read(path)
        out.append(Text("unicode", f"{package}/{rel}", str(path), _sha256(data), text))
    return out


def _cjk_prose() -> list[Text]:
    folder = STDLIB / "test" / "cjkencodings"
    out = []
    for path in sorted(folder.glob("*-utf8.txt")) if folder.is_dir() else ():
        data, text = _read(path)
        out.append(Text("cjk-prose", f"test/cjkencodings/{path.name}", str(path), _sha256(data), text))
    return out


_LOADERS = {
    "pydoc-topics": _pydoc_topics,
    "stdlib-code": _stdlib_code,
    "dist-docs": _dist_docs,
    "unicode": _unicode_files,
    "cjk-prose": _cjk_prose,
}


@lru_cache(maxsize=None)
def _load(source: str) -> tuple[Text, ...]:
    if source not in _LOADERS:
        raise KeyError(f"unknown corpus source {source!r}; known: {', '.join(SOURCES)}")
    return tuple(_LOADERS[source]())


# ---------------------------------------------------------------- the interface


def texts(*sources: str) -> list[Text]:
    """The texts of ``sources`` (all sources if none given), in a fixed order."""
    out: list[Text] = []
    for s in sources or tuple(SOURCES):
        out += _load(s)
    return out


def lines(*sources: str) -> list[str]:
    """Every non-blank line of the texts of ``sources``, in order, without its line end.

    Leading indentation, inner whitespace runs and trailing spaces are kept: they are
    what a tokenizer check needs to see.
    """
    return [ln for t in texts(*sources) for ln in t.text.splitlines() if ln.strip()]


def sample_lines(source: str, n: int) -> list[str]:
    """``n`` lines of ``source`` spread evenly over it (all of them if it has fewer)."""
    pool = lines(source)
    if len(pool) <= n:
        return pool
    return [pool[i * len(pool) // n] for i in range(n)]


def fingerprint(used: list[Text]) -> dict[str, str]:
    """{file path: sha256} of the files behind ``used``: what a result should cite."""
    return {t.path: t.sha256 for t in used}


if __name__ == "__main__":
    for src in SOURCES:
        ts = texts(src)
        chars = sum(len(t.text) for t in ts)
        non_ascii = sum(1 for t in ts for c in t.text if ord(c) > 127)
        print(f"{src:13s} {len(ts):4d} texts {chars:9,d} chars {non_ascii:7,d} non-ASCII {len(lines(src)):6,d} lines")
