"""The model as the page downloads it: the graph without its weights, and the weights in the
GGUF's own 4-bit / 8-bit blocks, which the page expands into exactly the fp16 bytes of
``model.onnx`` (the store module's ``kv_expand``, wasm/weights.c).

``model.onnx`` (builder/model.py) holds 121 fp16 matrices, 257 MB; the GGUF they come from
holds them as Q4_1 (the layers) and Q8_0 (the tied embedding), 97 MB. So the site ships:

    model/graph.onnx          the graph; its fp16 initializers are *external data* in one
                              file named ``weights.fp16`` (offset, length per tensor), which
                              the page builds and hands to onnxruntime-web (``externalData``)
    model/weights-<sha>.bin   the GGUF's blocks, tensor after tensor, in parts of ≤ ~16 MB
                              (content-hashed names: a cache never serves a stale part)
    weights.json              the recipe: for every part its tensors, and for every tensor
                              where its values land in ``weights.fp16`` (offset, row stride,
                              first column, transposed or not, the q/k row permutation)

One source of truth for the bytes: the build expands the parts with the NumPy reference
(``gguf.quants.dequantize``, the same call builder/gguf_load.py makes, then the same
permutation, fusion, transpose and fp16 rounding as builder/onnx_graph.py) and refuses to
write anything unless the result equals ``model.onnx``'s fp16 data byte for byte; its sha256
is kept in the recipe, and tests/wasm/test_wasm_weights.py checks the C kernel (SIMD and
scalar) against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from . import paths

HERE = Path(__file__).resolve().parent
FORMAT = "kvlab-weights-1"
DATA_NAME = "weights.fp16"  # the external-data file name the graph refers to
PART_TARGET = 16 << 20  # bytes per part, about: parts download side by side and are cached one by one
GGML = {"Q4_1": 3, "Q8_0": 8}  # ggml type ids (kv_expand's `type`)


# ---- which GGUF tensors make which fp16 initializer ------------------------------------------


def sources(name: str, config: dict) -> tuple[list[tuple[str, int, int]], bool]:
    """The GGUF tensors of initializer ``name`` as [(gguf name, first column, rope head_dim)],
    and whether they are stored transposed ((in, out), the linear layers) or not (the
    embedding). Mirrors builder.onnx_graph.stored_weights."""
    if name == "model.embed_tokens.weight":
        return [("token_embd.weight", 0, 0)], False
    parts = name.split(".")
    if parts[:2] != ["model", "layers"] or len(parts) != 6:
        raise SystemExit(f"error: no GGUF source known for the fp16 initializer {name}")
    i, which = parts[2], ".".join(parts[3:5])
    d, q, kv, ffn = config["head_dim"], config["n_heads"] * config["head_dim"], \
        config["n_kv_heads"] * config["head_dim"], config["ffn"]
    blk = f"blk.{i}."
    table = {
        "self_attn.qkv_proj": [(blk + "attn_q.weight", 0, d), (blk + "attn_k.weight", q, d),
                               (blk + "attn_v.weight", q + kv, 0)],
        "self_attn.o_proj": [(blk + "attn_output.weight", 0, 0)],
        "mlp.gate_up_proj": [(blk + "ffn_gate.weight", 0, 0), (blk + "ffn_up.weight", ffn, 0)],
        "mlp.down_proj": [(blk + "ffn_down.weight", 0, 0)],
    }
    if which not in table:
        raise SystemExit(f"error: no GGUF source known for the fp16 initializer {name}")
    return table[which], True


# ---- the NumPy reference ---------------------------------------------------------------------


def expand_reference(blocks: bytes, tensor: dict, out: np.ndarray) -> None:
    """Expand one tensor's blocks into ``out`` (the whole fp16 data as uint16), as the builder
    computes model.onnx's bytes: dequantize in float32 (gguf.quants), undo the q/k row
    permutation, place (transposed) at its columns, round to fp16."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from .gguf_load import unpermute_rope_rows

    rows, cols, ld, col0 = tensor["rows"], tensor["cols"], tensor["ld"], tensor["col0"]
    qtype = GGMLQuantizationType(tensor["type"])
    w = dequantize(np.frombuffer(blocks, np.uint8).reshape(rows, -1), qtype).astype(np.float32)  # (rows, cols)
    if tensor["rope_d"]:
        w = unpermute_rope_rows(w, rows // tensor["rope_d"])
    h = w.astype(np.float16).view(np.uint16)
    start = tensor["dst"] // 2
    if tensor["transpose"]:  # the initializer is (cols, ld): this tensor is columns col0 .. col0 + rows
        dst = out[start:start + cols * ld].reshape(cols, ld)
        dst[:, col0:col0 + rows] = h.T
    else:                    # (rows, ld): columns col0 .. col0 + cols
        dst = out[start:start + rows * ld].reshape(rows, ld)
        dst[:, col0:col0 + cols] = h


def expand_all(recipe: dict, read_part) -> np.ndarray:
    """The whole ``weights.fp16`` from the parts (``read_part(part) -> bytes``), by the
    reference; returns uint16 (bytes = recipe["bytes"])."""
    out = np.zeros(recipe["bytes"] // 2, np.uint16)
    for part in recipe["parts"]:
        data = read_part(part)
        for t in part["tensors"]:
            expand_reference(data[t["offset"]:t["offset"] + t["src_bytes"]], t, out)
    return out


# ---- the build -------------------------------------------------------------------------------


def _recipe(model, reader, config: dict) -> tuple[list[dict], list[tuple[str, bytes]]]:
    """Tensors in graph order, with where they land, and their GGUF blocks."""
    from onnx import TensorProto

    by_name = {t.name: t for t in reader.tensors}
    tensors, blocks, offset = [], [], 0
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT16:
            continue
        srcs, transpose = sources(init.name, config)
        dims = list(init.dims)  # (in, ld) transposed, (rows, ld) not
        ld = dims[1]
        for gguf_name, col0, rope_d in srcs:
            t = by_name[gguf_name]
            qtype = t.tensor_type.name
            if qtype not in GGML:
                raise SystemExit(f"error: GGUF tensor {gguf_name} is {qtype}; the page expands Q4_1 and Q8_0 only")
            cols, rows = (int(n) for n in t.shape)  # GGUF order: ne0 = cols (the block axis)
            tensors.append({"name": gguf_name, "init": init.name, "type": GGML[qtype], "rows": rows,
                            "cols": cols, "dst": offset, "ld": ld, "col0": col0, "rope_d": rope_d,
                            "transpose": transpose})
            blocks.append((gguf_name, bytes(t.data)))
        offset += len(init.raw_data)
    return tensors, blocks


def _cut(tensors: list[dict], blocks: list[tuple[str, bytes]]) -> list[tuple[dict, bytes]]:
    """Group consecutive tensors into parts of about PART_TARGET bytes."""
    parts, cur, data = [], [], bytearray()
    for t, (_, b) in zip(tensors, blocks):
        if cur and len(data) + len(b) > PART_TARGET:
            parts.append((cur, bytes(data)))
            cur, data = [], bytearray()
        cur.append(dict(t, offset=len(data), src_bytes=len(b)))
        data += b
    if cur:
        parts.append((cur, bytes(data)))
    return [({"tensors": ts}, d) for ts, d in parts]


def build_weights(bundle: Path, force: bool = False) -> Path:
    """Write graph.onnx, the parts and weights.json for the bundle's model (once per model);
    returns their folder."""
    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    model_sha = manifest["files"]["model.onnx"]["sha256"]
    out = paths.cache_root() / ("weights-" + paths.hash_sources(model_sha, Path(__file__),
                                                                HERE / "gguf_load.py"))
    if (out / "weights.json").is_file() and not force:
        return out

    import onnx
    from gguf import GGUFReader
    from onnx import TensorProto

    config = json.loads((bundle / "config.json").read_text())
    model = onnx.load(str(bundle / "model.onnx"))
    reader = GGUFReader(str(paths.gguf_path()))
    tensors, blocks = _recipe(model, reader, config)
    parts = _cut(tensors, blocks)

    # today's fp16 bytes, in graph order: what the expansion must give
    fp16 = [init for init in model.graph.initializer if init.data_type == TensorProto.FLOAT16]
    want = b"".join(init.raw_data for init in fp16)
    recipe = {"format": FORMAT, "data": DATA_NAME, "bytes": len(want),
              "sha256": hashlib.sha256(want).hexdigest(), "parts": []}
    for meta, data in parts:
        sha = hashlib.sha256(data).hexdigest()
        meta |= {"path": f"model/weights-{sha[:16]}.bin", "bytes": len(data), "sha256": sha}
        recipe["parts"].append(meta)
    datas = {p["path"]: d for p, (_, d) in zip(recipe["parts"], parts)}
    got = expand_all(recipe, lambda p: datas[p["path"]]).tobytes()
    if got != want:
        bad = next(i for i in range(0, len(want), 2) if got[i:i + 2] != want[i:i + 2])
        raise SystemExit(f"error: the GGUF blocks do not expand into model.onnx's fp16 bytes (first "
                         f"difference at byte {bad}); the graph builder and builder/weights.py disagree")
    del got

    # the graph: the same initializers, their payload moved to the external file
    offset = 0
    for init in fp16:
        n = len(init.raw_data)
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        for k, v in (("location", DATA_NAME), ("offset", str(offset)), ("length", str(n))):
            init.external_data.add(key=k, value=v)
        offset += n
    graph = model.SerializeToString()
    recipe["graph"] = {"path": "model/graph.onnx", "bytes": len(graph), "sha256": hashlib.sha256(graph).hexdigest()}

    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "graph.onnx").write_bytes(graph)
        for p, (_, d) in zip(recipe["parts"], parts):
            (tmp / Path(p["path"]).name).write_bytes(d)
        (tmp / "weights.json").write_text(json.dumps(recipe, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from .bundle import prune

    prune({out}, kinds=("weights",))
    return out


def read_recipe(folder: Path) -> dict:
    return json.loads((Path(folder) / "weights.json").read_text())
