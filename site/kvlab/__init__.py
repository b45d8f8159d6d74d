"""KV Cache Lab's engine: a real small LLM generating through a compressed KV cache.

Pure Python (it also runs under Pyodide, which has no NumPy): every loop over tokens,
channels or the vocabulary lives in the wasm KV store or the ONNX graph. The world is
reached through a *host* (``kvlab.host``): natively onnxruntime + wasmtime, in the page
onnxruntime-web + ``WebAssembly``.
"""

__version__ = "0.1.0"
