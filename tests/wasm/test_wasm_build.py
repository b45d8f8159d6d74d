"""The KV store build: two modules, the same exports, SIMD only where asked, no imports,
and a Python mirror (kvlab.formats) that says what the C header says."""

from __future__ import annotations

import re

import wasmtime

from builder.paths import REPO
from builder.wasm import SCALAR_NAME, SIMD_NAME, build_wasm, uses_simd
from kvlab import formats

EXPORTS = sorted(
    """kv_add_rows kv_age kv_alloc kv_argmax kv_bytes kv_capacity kv_collapse kv_collapse_map kv_collapse_mean kv_collapsed kv_configure kv_configure_head kv_cumshare
    kv_dequantize kv_dequantize_channel kv_evict kv_expand kv_format_bytes kv_formats kv_free kv_head_format kv_heap_bytes kv_hide kv_init
    kv_io_bytes kv_keep_map kv_layer_ptr kv_live kv_logit_stats kv_memcpy kv_meter
    kv_moment_scores kv_moments kv_positions kv_quantize kv_quantize_channel kv_range_sums kv_reset
    kv_rope_unrotate kv_rotate kv_rows kv_sample kv_score kv_score_drop kv_scores kv_seed kv_select
    kv_set_limit kv_simd kv_staging_bytes kv_step_begin kv_step_commit kv_summarize kv_tokens
    kv_truncate kv_version""".split()
)


def test_build_is_cached_and_complete(monkeypatch):
    import builder.wasm as bw

    d = build_wasm()

    def compile_again(*args, **kwargs):
        raise AssertionError("the second build_wasm() compiled again")

    monkeypatch.setattr(bw, "compile_wasm", compile_again)
    assert build_wasm() == d  # the second call finds it, and compiles nothing
    assert (d / SIMD_NAME).stat().st_size > 1000 and (d / SCALAR_NAME).stat().st_size > 1000


def test_simd_only_in_the_simd_build():
    d = build_wasm()
    assert uses_simd((d / SIMD_NAME).read_bytes())
    assert not uses_simd((d / SCALAR_NAME).read_bytes())


def test_exports_are_i32_f32_only_and_there_are_no_imports():
    d = build_wasm()
    engine = wasmtime.Engine()
    for name in (SIMD_NAME, SCALAR_NAME):
        mod = wasmtime.Module.from_file(engine, d / name)
        assert list(mod.imports) == []
        ex = {e.name: e.type for e in mod.exports}
        assert sorted(n for n in ex if n != "memory") == EXPORTS
        mem = ex["memory"]
        assert mem.limits.max == 32768  # pages: 2 GiB, so every pointer is a positive i32
        assert mem.limits.min <= 4  # starts small, grows on demand
        for n in EXPORTS:
            types = [str(t) for t in list(ex[n].params) + list(ex[n].results)]
            assert set(types) <= {"i32", "f32"}, (n, types)


def test_python_mirror_matches_the_header():
    h = (REPO / "wasm" / "kvstore.h").read_text()
    defines = {k: int(v) for k, v in re.findall(r"#define (KV_E\w+|KV_OK) (-?\d+)", h)}
    assert defines == {
        "KV_OK": formats.OK,
        "KV_ENOMEM": formats.ENOMEM,
        "KV_EINVAL": formats.EINVAL,
        "KV_ESTATE": formats.ESTATE,
    }
    enum = {k: int(v) for k, v in re.findall(r"^\s+KV_(\w+) = (\d+),", h, re.M)}
    n = enum.pop("N_FORMATS")
    assert {k.lower(): v for k, v in enum.items()} == formats.BY_NAME and n == len(formats.NAMES)
    assert int(re.search(r"#define KV_GROUP_DEFAULT (\d+)", h).group(1)) == formats.GROUP_DEFAULT
    assert int(re.search(r"#define KV_TURBO_SIGNS (0x[0-9a-f]+)ull", h).group(1), 16) == formats.TURBO_SIGNS
    for code in (formats.ENOMEM, formats.EINVAL, formats.ESTATE):
        assert formats.message(code)


def test_formats_mirror():
    assert [formats.from_bits(b) for b in (32, 16, 8, 4)] == [formats.F32, formats.F16, formats.Q8, formats.Q4]
    assert formats.fmt("q4") == formats.Q4 and formats.NAMES[formats.Q8] == "q8"
    assert formats.group_bytes(formats.Q8, 32) == 34 and formats.group_bytes(formats.Q4, 32) == 20
    # per token of SmolLM2-135M (30 layers, 3 KV heads, head_dim 64), K + V
    assert formats.token_bytes(formats.F32, formats.F32, 32, 30, 3, 64) == 11520 * 4
    assert formats.token_bytes(formats.F16, formats.F16, 32, 30, 3, 64) == 11520 * 2
    assert formats.token_bytes(formats.Q8, formats.Q8, 32, 30, 3, 64) == 360 * 34
    assert formats.token_bytes(formats.Q4, formats.Q4, 32, 30, 3, 64) == 360 * 20
    # the low-bit formats: 16, 12 and 18 bytes per group of 32 (q4_0 as llama.cpp's)
    assert [formats.group_bytes(f, 32) for f in (formats.Q3, formats.Q2, formats.Q4_0)] == [16, 12, 18]
    assert [formats.from_bits(b) for b in (3, 2)] == [formats.Q3, formats.Q2]
    assert formats.fmt("q4_0") == formats.Q4_0 and formats.LLAMA_CPP[formats.Q4] == "q4_1"
    assert [formats.group_bytes(f, 32) for f in (formats.TURBO2, formats.TURBO3, formats.TURBO4)] == [10, 14, 18]
