"""Build the KV store: wasm/*.c -> kvstore.wasm (v128 SIMD) and kvstore-scalar.wasm.

The compiler is zig's clang from the ``ziglang`` PyPI package (``python -m ziglang cc``):
nothing from apt, and its wasm32 output runs in Chromium, Node and wasmtime. The same
sources are compiled twice, with and without ``-msimd128``; both builds export the same
functions (docs/store.md (section "Exports") lists them) and must give the same bytes (tests/wasm).

Output: ``cache_root()/"wasm-<key>"/{kvstore.wasm, kvstore-scalar.wasm}``, where the key
hashes the sources, this file and the compiler version, so a change rebuilds and an
unchanged tree returns at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from builder.paths import REPO, cache_root, hash_sources

WASM_SRC = REPO / "wasm"
SIMD_NAME = "kvstore.wasm"
SCALAR_NAME = "kvstore-scalar.wasm"

# ---------------------------------------------------------------------------------------
# Compiler flags
# ---------------------------------------------------------------------------------------

CFLAGS = [
    "-std=c11",
    "-O3",
    "--target=wasm32-freestanding",
    "-mbulk-memory",  # memcpy/memset lower to memory.copy/fill: no libc needed
    "-mnontrapping-fptoint",  # saturating float->int (the kernels' conversions)
    "-ffp-contract=off",  # never fuse a*b+c: the NumPy reference rounds twice
    "-fno-builtin",  # no libm calls from the optimiser (there is no libc to link)
    "-g0",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-nostdlib",
]
LDFLAGS = [
    "-Wl,--no-entry",  # a library: no _start
    "-Wl,--export-memory",
    "-Wl,-z,stack-size=65536",  # 64 KiB of stack keeps the initial memory at a few pages
    "-Wl,--max-memory=2147483648",  # 2 GiB: every pointer is a positive i32 for JS
]
# Exports come from export_name attributes in the C (KV_EXPORT), nothing else leaks.


def _zig(*args: str) -> subprocess.CompletedProcess:
    # zig keeps a compilation cache; unless told otherwise, keep it inside the artifact
    # cache (the default, ~/.cache/zig, may be read-only in sandboxes)
    env = dict(os.environ)
    zig_cache = str(cache_root() / "zig-cache")
    env.setdefault("ZIG_GLOBAL_CACHE_DIR", zig_cache)
    env.setdefault("ZIG_LOCAL_CACHE_DIR", zig_cache)
    return subprocess.run([sys.executable, "-m", "ziglang", *args], capture_output=True, text=True, env=env)


def compiler_version() -> str:
    r = _zig("version")
    if r.returncode != 0:
        raise RuntimeError(f"ziglang is not usable: {r.stderr.strip()}")
    return r.stdout.strip()


def sources() -> list[Path]:
    """The inputs of the build, in a stable order (the cache key hashes them)."""
    return sorted(WASM_SRC.glob("*.c")) + sorted(WASM_SRC.glob("*.h"))


def compile_wasm(out: Path, simd: bool) -> None:
    """Compile every wasm/*.c into one module at ``out``."""
    cmd = ["cc", *CFLAGS, *(["-msimd128"] if simd else []), *LDFLAGS]
    cmd += [str(p) for p in sorted(WASM_SRC.glob("*.c"))] + ["-o", str(out)]
    r = _zig(*cmd)
    if r.returncode != 0:
        raise RuntimeError(f"wasm build failed ({'simd' if simd else 'scalar'}):\n{r.stderr}")


# ---------------------------------------------------------------------------------------
# Checking what came out
# ---------------------------------------------------------------------------------------


def uses_simd(wasm: bytes) -> bool:
    """True when the module needs the SIMD proposal.

    Validated by wasmtime with SIMD switched off: that fails exactly when some function
    uses a v128 type or instruction (a byte scan for the 0xfd prefix would also match
    immediates).
    """
    import wasmtime

    cfg = wasmtime.Config()
    cfg.wasm_relaxed_simd = False
    cfg.wasm_simd = False
    try:
        wasmtime.Module.validate(wasmtime.Engine(cfg), wasm)
    except wasmtime.WasmtimeError:
        # it must be valid with SIMD on, else it is simply broken
        wasmtime.Module.validate(wasmtime.Engine(), wasm)
        return True
    return False


def exports(wasm: bytes) -> list[str]:
    import wasmtime

    return sorted(e.name for e in wasmtime.Module(wasmtime.Engine(), wasm).exports)


def check_pair(simd_wasm: bytes, scalar_wasm: bytes) -> None:
    if not uses_simd(simd_wasm):
        raise RuntimeError("the -msimd128 build contains no v128 code")
    if uses_simd(scalar_wasm):
        raise RuntimeError("the scalar build contains v128 code")
    if exports(simd_wasm) != exports(scalar_wasm):
        raise RuntimeError("the SIMD and scalar builds export different functions")


# ---------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------


def build_key() -> str:
    return hash_sources(*sources(), Path(__file__), compiler_version(), " ".join(CFLAGS + LDFLAGS))


def build_wasm(force: bool = False) -> Path:
    """Build both modules (unless already cached); returns their directory.

    The directory holds ``kvstore.wasm`` (v128) and ``kvstore-scalar.wasm``. Built in a
    temporary directory and renamed into place, so a half-built result is never seen.
    """
    out = cache_root() / f"wasm-{build_key()}"
    if out.is_dir() and not force:
        return out
    tmp = Path(tempfile.mkdtemp(prefix=".wasm-", dir=cache_root()))
    try:
        compile_wasm(tmp / SIMD_NAME, simd=True)
        compile_wasm(tmp / SCALAR_NAME, simd=False)
        check_pair((tmp / SIMD_NAME).read_bytes(), (tmp / SCALAR_NAME).read_bytes())
        if out.exists():
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:
            if not out.is_dir():  # a concurrent build won the race: theirs is as good
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    d = build_wasm(force="--force" in sys.argv)
    for name in (SIMD_NAME, SCALAR_NAME):
        print(f"{d / name}  {(d / name).stat().st_size} bytes")
