"""The builder: GGUF → ONNX + tokenizer data, C → wasm KV store, templates → dist/.

Everything it makes goes into the artifact cache (``paths.cache_root()``), keyed by
the hash of its inputs, so a second run does nothing.
"""
