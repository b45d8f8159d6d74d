"""The host interface: the only way the engine reaches the model and the KV store.

Two implementations share it: ``native`` (onnxruntime + wasmtime, for tests and the CLI)
and ``browser`` (onnxruntime-web + ``WebAssembly``, under Pyodide). The engine never sees
a tensor: it hands the host a *step table* (pointers into the store's memory, see
``kvlab.store.StepTable``) and the host moves bytes between the store and the model.
"""

from __future__ import annotations

from typing import Protocol

from ..store import KVStore, StepTable


class Host(Protocol):
    """What the engine needs from its surroundings."""

    name: str
    #: which build of the store runs: "simd" or "scalar" (no WebAssembly SIMD)
    variant: str
    #: the KV store, already instantiated from kvstore(.wasm | -scalar.wasm)
    store: KVStore
    #: the model's configuration (config.json written by the builder)
    config: dict
    #: the tokenizer data (tokenizer.json written by the builder), as text
    tokenizer_json: str

    def run(self, input_ids: list[int], position_ids: list[int], table: StepTable) -> None:
        """Run the model on S new tokens.

        Reads each layer's past K/V/mask from the store memory at the table's pointers
        (past_k, past_v: (1, kv_heads, P_i, head_dim); past_mask: (1, kv_heads, P_i)),
        and writes the outputs back at the table's pointers: new K/V (1, kv_heads, S,
        head_dim), attn (1, q_heads, P_i + S), entropy (1, q_heads), logits (1, vocab).
        """
        ...

    async def run_async(self, input_ids: list[int], position_ids: list[int], table: StepTable) -> None:
        """``run`` for hosts whose model answers asynchronously (the browser); optional:
        ``Engine.generate`` uses ``run``, ``Engine.generate_async`` uses this."""
        ...

    def now_ms(self) -> float:
        """A monotonic clock in milliseconds (for the per-token timings)."""
        ...
