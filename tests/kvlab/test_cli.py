"""``python -m kvlab`` as outside checks use it: JSON out, clear errors, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def kvlab(bundle, *args, artifacts=None):
    cmd = [sys.executable, "-m", "kvlab", "--artifacts", str(artifacts or bundle), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_tokenize_prints_ids(bundle, engine):
    r = kvlab(bundle, "tokenize", "Hello, KV cache 2048!")
    assert r.returncode == 0, r.stderr
    ids = json.loads(r.stdout)
    assert ids == engine.tokenizer.encode("Hello, KV cache 2048!")
    assert engine.tokenizer.decode(ids) == "Hello, KV cache 2048!"


def test_generate_json_has_the_contract(bundle):
    r = kvlab(bundle, "generate", "--prompt", "The capital of France is", "--max-new-tokens", "8",
              "--policy", '{"quant": {"k_bits": 4, "v_bits": 8}}', "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for key in ("prompt_ids", "ids", "text", "cache_bytes", "fp32_bytes", "fp16_bytes",
                "bytes_per_step", "ms_per_token"):
        assert key in res, key
    assert 1 <= len(res["ids"]) <= 8
    assert len(res["bytes_per_step"]) == len(res["ids"])
    assert res["bytes_per_step"] == sorted(res["bytes_per_step"])  # no eviction: it only grows
    assert 0 < res["cache_bytes"] < res["fp16_bytes"] < res["fp32_bytes"]
    assert res["policy"] == {"quant": {"k_bits": 4, "v_bits": 8, "group_size": 32, "k_format": None, "v_format": None,
                                       "rotate": False, "recent_k": 0, "recent_v": 0, "k_axis": "token"}}


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["--prompt", ""], 2, "prompt is empty"),
        (["--prompt", "   \n "], 2, "prompt is empty"),
        (["--prompt", "hello " * 9000], 2, "more than the model's context"),
        (["--prompt", "hi", "--max-new-tokens", "0"], 2, "max_new_tokens"),
        (["--prompt", "hi", "--policy", '{"quant": {"bits": 4}}'], 2, "unknown parameter 'bits'"),
        (["--prompt", "hi", "--policy", '{"evict": {}}'], 2, "unknown technique 'evict'"),
        (["--prompt", "hi", "--policy", '{"quant": {"k_bits": 5}}'], 2, "must be one of"),
        (["--prompt", "hi", "--policy", '{"quant": {"k_format": "q4_0", "k_bits": 2}}'], 2, "give one of the two"),
        (["--prompt", "hi", "--policy", '{"quant": {"v_bits": 64}}'], 2, "must be one of"),
        (["--prompt", "hi", "--policy", "{quant"], 2, "not valid JSON"),
        (["--prompt", "hi", "--policy", '{"quant": {"k_bits": 4, "recent_k": -3}}'], 2, "quant.recent_k must be"),
        (["--prompt", "hi", "--policy", '{"quant": {"k_bits": 4, "recent_k": 9000}}'], 2, "beyond the model's context"),
        (["--prompt", "hi", "--policy", '{"quant": {"k_bits": 8, "k_axis": "channel"}}'], 2, "needs 4, 3 or 2-bit keys"),
        (["--prompt", "hi", "--temperature", "-1"], 2, "temperature"),
        (["--prompt", "hi", "--top-p", "0"], 2, "top_p"),
    ],
)
def test_bad_input_is_a_clear_error(bundle, args, code, words):
    r = kvlab(bundle, "generate", *args, "--json")
    assert r.returncode == code, (r.returncode, r.stderr)
    assert words in r.stderr
    assert r.stderr.startswith("error: ") or "\nerror: " in r.stderr
    assert r.stdout == ""  # nothing half-written


def _copy_bundle(bundle, tmp_path):
    """A private copy of the bundle with real files (not links), to damage."""
    out = tmp_path / "bundle"
    out.mkdir()
    for f in bundle.iterdir():
        shutil.copyfile(f.resolve(), out / f.name)
    return out


@pytest.mark.parametrize("victim", ["model.onnx", "tokenizer.json", "kvstore.wasm", "config.json"])
def test_corrupted_artifact_is_refused(bundle, tmp_path, victim):
    copy = _copy_bundle(bundle, tmp_path)
    path = copy / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55  # one flipped byte, same size: only the hash can tell
    path.write_bytes(bytes(data))
    r = kvlab(bundle, "generate", "--prompt", "hi", "--json", artifacts=copy)
    assert r.returncode == 1
    assert f"{victim} is corrupted" in r.stderr and "python -m builder all" in r.stderr
    assert r.stdout == ""


def test_truncated_and_missing_model_are_refused(bundle, tmp_path):
    copy = _copy_bundle(bundle, tmp_path)
    model = copy / "model.onnx"
    with open(model, "r+b") as f:
        f.truncate(os.path.getsize(model) // 2)
    r = kvlab(bundle, "generate", "--prompt", "hi", "--json", artifacts=copy)
    assert r.returncode == 1 and "model.onnx is corrupted" in r.stderr
    model.unlink()
    r = kvlab(bundle, "generate", "--prompt", "hi", "--json", artifacts=copy)
    assert r.returncode == 1 and "model.onnx is missing" in r.stderr
    r = kvlab(bundle, "generate", "--prompt", "hi", "--json", artifacts=tmp_path / "nowhere")
    assert r.returncode == 1 and "no built artifacts" in r.stderr


def test_techniques_lists_the_registry(bundle):
    r = kvlab(bundle, "techniques")
    assert r.returncode == 0
    from kvlab.techniques import REGISTRY

    assert [t["name"] for t in json.loads(r.stdout)] == list(REGISTRY)
    assert {"quant", "streaming", "h2o", "snapkv", "pyramidkv", "compresskv", "tova", "knorm", "duo"} <= set(REGISTRY)
