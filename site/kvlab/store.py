"""The KV store, seen from Python: a thin, pure-Python wrapper over the wasm exports.

The store (wasm/*.c) holds the compressed KV cache and the dequantized fp32 "staging" past
the model reads. This class only calls exports and parses the step table; it runs under
Pyodide (no NumPy), so it never touches tensors: the host moves bytes between the store's
memory and the model at the pointers in the step table.

The module it wraps is anything with this small protocol (``kvlab.host.wasmtime_module``
natively, the ``js`` bridge in the browser)::

    call(name, *args) -> int | float      # an export; i32 / f32 arguments only
    read(ptr, nbytes) -> bytes            # copy out of linear memory
    write(ptr, data: bytes) -> None       # copy into linear memory
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Protocol

from . import formats

# ---------------------------------------------------------------------------------------
# Module protocol and errors
# ---------------------------------------------------------------------------------------


class Module(Protocol):
    def call(self, name: str, *args: int | float) -> int | float: ...

    def read(self, ptr: int, nbytes: int) -> bytes: ...

    def write(self, ptr: int, data: bytes) -> None: ...


class StoreError(RuntimeError):
    """A store export returned a negative code (see ``kvlab.formats.ERRORS``)."""

    def __init__(self, code: int, what: str):
        self.code = code
        super().__init__(f"{what}: {formats.message(code)} ({code})")


# ---------------------------------------------------------------------------------------
# The step table
# ---------------------------------------------------------------------------------------

TABLE_HEAD = 4  # int32 words before the per-layer entries
TABLE_LAYER = 8  # int32 words per layer


class LayerIO(NamedTuple):
    """One layer's buffers for a step (pointers into the store's memory).

    past_k, past_v: (kv_heads, P, head_dim) f32, the staging the model reads.
    past_mask: (kv_heads, P) f32, 0 for live slots, -1e9 for empty ones.
    P: slots handed to the model (staging capacity, >= tokens + S).
    new_k, new_v: (kv_heads, S, head_dim) f32, the host writes the new tokens' K/V.
    attn: (q_heads, P + S) f32, entropy: (q_heads,) f32, written by the host.
    """

    past_k: int
    past_v: int
    past_mask: int
    P: int
    new_k: int
    new_v: int
    attn: int
    entropy: int


class StepTable(NamedTuple):
    """What ``kv_step_begin(S)`` reserved: where the host reads the past and writes outputs.

    logits: (vocab,) f32, written by the host. Valid until the next step_begin/reset/init.
    """

    ptr: int
    S: int
    logits: int
    layers: list[LayerIO]

    @classmethod
    def parse(cls, ptr: int, raw: bytes) -> StepTable:
        """From the table's int32 words: [n_layers, S, logits, reserved, 8 per layer...]."""
        words = struct.unpack(f"<{len(raw) // 4}i", raw)
        n_layers, S, logits = words[0], words[1], words[2]
        layers = [
            LayerIO._make(words[TABLE_HEAD + TABLE_LAYER * i : TABLE_HEAD + TABLE_LAYER * (i + 1)])
            for i in range(n_layers)
        ]
        return cls(ptr, S, logits, layers)


# ---------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------

PART_K, PART_V, PART_META = 0, 1, 2


class KVStore:
    """The KV store's exports with Python errors and a parsed step table.

    Typical use per model run of S new tokens::

        table = store.step_begin(S)      # reserves everything; StoreError(-1) if no memory
        host.run(ids, positions, table)  # reads table.layers[i].past_*, writes new_*/logits
        store.step_commit(S)             # appends (quantizes + fills staging); cannot fail
        token = store.sample(table.logits, temperature=0.7, top_k=40, top_p=0.95)
    """

    def __init__(self, module: Module):
        self.module = module
        self.n_layers = 0
        self.n_kv_heads = 0
        self.n_q_heads = 0
        self.head_dim = 0
        self.vocab = 0
        #: resets so far: a conversation notices that another run emptied the cache
        self.resets = 0

    def call(self, name: str, *args: int | float) -> int:
        """Call an export by name; a negative return (an error code) is raised as StoreError."""
        r = self.module.call(name, *args)
        if isinstance(r, int) and r < 0:
            raise StoreError(r, name)
        return r

    # ---- setup

    def init(self, n_layers: int, n_kv_heads: int, n_q_heads: int, head_dim: int, vocab: int) -> None:
        """Shape the cache (drops any previous one); every layer starts f32/f32, G=32."""
        self.call("kv_init", n_layers, n_kv_heads, n_q_heads, head_dim, vocab)
        self.n_layers, self.n_kv_heads, self.n_q_heads = n_layers, n_kv_heads, n_q_heads
        self.head_dim, self.vocab = head_dim, vocab

    def configure(self, layer: int, k_fmt: int | str, v_fmt: int | str, group: int = formats.GROUP_DEFAULT) -> None:
        """Formats of one layer's K and V (layer -1: all); the layer must hold no tokens."""
        self.call("kv_configure", layer, formats.fmt(k_fmt), formats.fmt(v_fmt), group)

    def configure_head(self, layer: int, head: int, k_fmt: int | str, v_fmt: int | str) -> None:
        """One KV head's own K and V formats (after ``configure``, which sets every head's;
        the layer's group size, rotation and aging stay), while the layer holds no tokens."""
        self.call("kv_configure_head", layer, head, formats.fmt(k_fmt), formats.fmt(v_fmt))

    def head_format(self, layer: int, head: int, part: int) -> int:
        """The format of part 0 (K) or 1 (V) of one KV head."""
        return self.call("kv_head_format", layer, head, part)

    def formats(self) -> list[list[tuple[int, int]]]:
        """Every KV head's (K format, V format), per layer: one call."""
        n = self.n_layers * self.n_kv_heads * 2
        ptr = self.alloc(4 * n)
        try:
            self.call("kv_formats", ptr)
            w = struct.unpack(f"<{n}i", self.module.read(ptr, 4 * n))
        finally:
            self.free(ptr)
        H = self.n_kv_heads
        return [[(w[2 * (layer * H + h)], w[2 * (layer * H + h) + 1]) for h in range(H)] for layer in range(self.n_layers)]

    def rotate(self, layer: int, k: bool, v: bool) -> None:
        """Rotate one layer's K and/or V rows (layer -1: all) by the random-sign Walsh-Hadamard
        transform before their format, and back when staged; after ``configure`` (which
        clears it), while the layer holds no tokens."""
        self.call("kv_rotate", layer, int(bool(k)), int(bool(v)))

    def age(self, layer: int, part: int, recent: int, axis: int = 0) -> None:
        """Age part 0 (K) or 1 (V) of one layer (-1: all): each head's newest ``recent``
        entries wait exact (fp32, counted as cache bytes) and go into the format when they
        leave that window; axis 1 quantizes per channel, G entries at a time (KIVI). After
        ``configure`` (which clears it), while the layer holds no tokens."""
        self.call("kv_age", layer, part, recent, axis)

    def collapse(self, layer: int, head: int, theta: float, mean=None, off: bool = False) -> None:
        """Collapse one KV head's keys (seed 000): each is stored as its residual from one
        mean pre-RoPE key, in the head's K format (``none``: the mean alone), and staged as
        RoPE(mean + residual) at its position with base ``theta``. ``mean``: head_dim floats
        (e.g. the profile's), or None for the mean of the keys of the first run committed
        after this call or a reset (the prompt's first run). ``off`` uncollapses it. After ``configure`` /
        ``configure_head`` (``configure`` clears it), while the layer holds no tokens."""
        if off:
            self.call("kv_collapse", layer, head, float(theta), -1)
            return
        if mean is None:
            self.call("kv_collapse", layer, head, float(theta), 0)
            return
        mean = [float(x) for x in mean]
        if len(mean) != self.head_dim:
            raise ValueError(f"a mean key has head_dim = {self.head_dim} values, got {len(mean)}")
        ptr = self.alloc(4 * self.head_dim)
        try:
            self.module.write(ptr, struct.pack(f"<{self.head_dim}f", *mean))
            self.call("kv_collapse", layer, head, float(theta), ptr)
        finally:
            self.free(ptr)

    def collapsed(self, layer: int, head: int) -> int:
        """0: the head's keys are stored as they are; 1: collapsed on a given mean; 2 / 3: on
        the mean of the keys of its first run after the collapse or a reset, not taken yet /
        taken."""
        return self.call("kv_collapsed", layer, head)

    def collapsed_map(self) -> list[list[int]]:
        """Per layer, per KV head: 1 if its keys are collapsed, else 0 (one call: the meter
        reads it at every token)."""
        n = self.n_layers * self.n_kv_heads
        ptr = self.alloc(4 * n)
        try:
            self.call("kv_collapse_map", ptr)
            w = struct.unpack(f"<{n}i", self.module.read(ptr, 4 * n))
        finally:
            self.free(ptr)
        H = self.n_kv_heads
        return [[int(w[layer * H + h] != 0) for h in range(H)] for layer in range(self.n_layers)]

    def collapse_mean(self, layer: int, head: int) -> list[float]:
        """A collapsed head's mean pre-RoPE key (head_dim floats)."""
        ptr = self.alloc(4 * self.head_dim)
        try:
            self.call("kv_collapse_mean", layer, head, ptr)
            return list(struct.unpack(f"<{self.head_dim}f", self.module.read(ptr, 4 * self.head_dim)))
        finally:
            self.free(ptr)

    def reset(self) -> None:
        """Drop all tokens; their memory goes back to the store's allocator (formats stay)."""
        self.call("kv_reset")
        self.resets += 1

    def set_limit(self, max_bytes: int) -> None:
        """Cap the store's heap (<= 0: no cap beyond the 2 GiB wasm maximum)."""
        self.call("kv_set_limit", max_bytes)

    # ---- steps

    def step_begin(self, S: int) -> StepTable:
        """Reserve the appending of S tokens; returns the step table."""
        ptr = self.call("kv_step_begin", S)
        n = self.n_layers or struct.unpack("<i", self.module.read(ptr, 4))[0]
        return StepTable.parse(ptr, self.module.read(ptr, 4 * (TABLE_HEAD + TABLE_LAYER * n)))

    def step_commit(self, S: int) -> None:
        """Append the S new tokens the host wrote into the step's new_k / new_v."""
        self.call("kv_step_commit", S)

    # ---- tools (the profiler): roll back, hide from attention

    def truncate(self, n: int) -> None:
        """Drop every token after the first n (all layers); the next position is n."""
        self.call("kv_truncate", n)

    def hide(self, layer: int, lo: int, hi: int, hidden: bool = True) -> None:
        """Mask a layer's live slots [lo, hi) from attention (or show them again); frees
        nothing: the model attends as if they were evicted."""
        self.call("kv_hide", layer, lo, hi, 1 if hidden else 0)

    # ---- eviction (wasm/evict.c): scorers, one selection, tools

    #: scorers of kv_score: what ranks an entry (higher = keep)
    SCORE_ATTN, SCORE_WINDOW, SCORE_LAST, SCORE_KNORM, SCORE_RECENT, SCORE_MAX = range(6)

    def score(self, kind: int, layer: int = -1, kernel: int = 1, weights: int = 0) -> None:
        """Score every live entry of a layer (-1: all) from the last step (see kv_score):
        ATTN accumulates group attention across steps (``kernel``: this step's whole-number
        weight); MAX keeps the largest per-query group mean a step gave; WINDOW is SnapKV's
        pooled window (``kernel``: its width; ``weights``: a pointer to (layers, q_heads)
        f32 to let chosen query heads decide for the whole layer); LAST is TOVA's; KNORM
        and RECENT need no attention."""
        self.call("kv_score", layer, kind, kernel, weights)

    def scores(self, layer: int, head: int) -> list[float]:
        """One head's scores, in entry order (after a ``score``; StoreError while none)."""
        n = self.live(layer, head)
        ptr = self.alloc(4 * max(1, n))
        try:
            got = self.call("kv_scores", layer, head, ptr)
            return list(struct.unpack(f"<{got}f", self.module.read(ptr, 4 * got)))
        finally:
            self.free(ptr)

    def score_drop(self, layer: int = -1) -> None:
        """Free accumulated scores (H2O's), so they are no longer held."""
        self.call("kv_score_drop", layer)

    def select(self, budgets: list[list[int]], sinks: int = 0, recent: int = 0) -> int:
        """Keep at most budgets[layer][head] entries per KV head (< 0: all) by the scores,
        the first ``sinks`` positions and ``recent`` newest entries protected; compacts and
        shrinks. Returns how many entries were evicted."""
        flat = [b for row in budgets for b in row]
        ptr = self.alloc(4 * len(flat))
        try:
            self.module.write(ptr, struct.pack(f"<{len(flat)}i", *flat))
            return self.call("kv_select", ptr, sinks, recent)
        finally:
            self.free(ptr)

    #: what kv_summarize puts in a summary entry
    SUMMARY_MODES = {"mean": 0, "zero_key": 1, "zero": 2}

    def summarize(self, spans: list[tuple[int, int, int]], mode: str = "mean", layer: int = -1) -> int:
        """Replace, in every KV head of a layer (-1: all), the entries whose positions lie
        in each span (lo, hi, at) — ascending, disjoint, lo <= at < hi — by one entry at
        position ``at``: the mean of their staged K and V ("mean"; seed 004's chunk summary),
        a zero key with the mean value ("zero_key") or zeros ("zero"), in the head's formats.
        Returns how many entries went."""
        if not spans:
            return 0
        flat = [int(x) for span in spans for x in span]
        ptr = self.alloc(4 * len(flat))
        try:
            self.module.write(ptr, struct.pack(f"<{len(flat)}i", *flat))
            return self.call("kv_summarize", layer, ptr, len(spans), self.SUMMARY_MODES[mode])
        finally:
            self.free(ptr)

    def evict(self, layer: int, head: int, keep: list[int]) -> int:
        """Keep exactly the listed entries (ascending entry indices) of one head."""
        ptr = self.alloc(4 * max(1, len(keep)))
        try:
            self.module.write(ptr, struct.pack(f"<{len(keep)}i", *keep))
            return self.call("kv_evict", layer, head, ptr, len(keep))
        finally:
            self.free(ptr)

    def live(self, layer: int, head: int) -> int:
        """Live entries of one KV head of a layer."""
        return self.call("kv_live", layer, head)

    def kept(self) -> list[list[int]]:
        """Live entries per layer and KV head: (layers, kv_heads)."""
        return [[self.live(i, h) for h in range(self.n_kv_heads)] for i in range(self.n_layers)]

    def meter(self) -> list[tuple[int, ...]]:
        """Per layer, in one call: (K bytes, V bytes, index bytes, live entries per KV head...)."""
        width = 3 + self.n_kv_heads
        ptr = self.alloc(4 * width * self.n_layers)
        try:
            n = self.call("kv_meter", ptr)
            words = struct.unpack(f"<{n}i", self.module.read(ptr, 4 * n))
        finally:
            self.free(ptr)
        return [words[i:i + width] for i in range(0, n, width)]

    def positions(self, layer: int, head: int) -> list[int]:
        """The original positions one KV head keeps, ascending."""
        n = self.live(layer, head)
        ptr = self.alloc(4 * max(1, n))
        try:
            got = self.call("kv_positions", layer, head, ptr)
            return list(struct.unpack(f"<{got}i", self.module.read(ptr, 4 * got)))
        finally:
            self.free(ptr)

    def keep_map(self, layer: int, n: int | None = None) -> str:
        """The cache map of a layer: one character per position 0..n-1 (default: every
        appended token), the bit mask of the KV heads that keep it in '0'-'9', 'a'-'v'."""
        n = self.tokens(-1) if n is None else n
        if n == 0:
            return ""
        ptr = self.alloc(n)
        try:
            self.call("kv_keep_map", layer, ptr, n)
            return self.module.read(ptr, n).decode("ascii")
        finally:
            self.free(ptr)

    # ---- accounting

    def bytes(self, layer: int = -1, part: int | None = None) -> int:
        """Exact bytes held: part 0 K, 1 V, 2 metadata, None = all three; layer -1 = all."""
        if part is None:
            return sum(self.call("kv_bytes", layer, p) for p in (PART_K, PART_V, PART_META))
        return self.call("kv_bytes", layer, part)

    def tokens(self, layer: int = -1) -> int:
        """Live tokens of a layer (the most any of its KV heads keeps); layer -1: tokens
        appended since reset (the next position)."""
        return self.call("kv_tokens", layer)

    def capacity(self, layer: int) -> int:
        """Staging slots (P) of a layer."""
        return self.call("kv_capacity", layer)

    def heap_bytes(self) -> int:
        """Linear memory the store's allocator has taken (never shrinks)."""
        return self.call("kv_heap_bytes")

    def staging_bytes(self) -> int:
        """Bytes of the fp32 staging buffers (K, V, mask at capacity)."""
        return self.call("kv_staging_bytes")

    def io_bytes(self) -> int:
        """Bytes of the step I/O buffers (logits, new K/V, attention, entropy)."""
        return self.call("kv_io_bytes")

    def working_bytes(self) -> int:
        """The working memory beside the cache: fp32 staging the model reads + step I/O."""
        return self.staging_bytes() + self.io_bytes()

    def rows(self, layer: int, head: int, part: int) -> bytes:
        """What one head holds for part 0 (K) or 1 (V): the rows of the entries in the
        format (entry order), a per-channel part's block params, then the entries waiting
        exact in an aging window (fp32, oldest first), then a collapsed key's mean (fp32)."""
        n = self.live(layer, head)
        ptr = self.alloc(8 * self.head_dim * (n + 1))
        try:
            got = self.call("kv_rows", layer, head, part, ptr)
            return self.module.read(ptr, got)
        finally:
            self.free(ptr)

    def version(self) -> int:
        return self.call("kv_version")

    # ---- choosing the next token

    def argmax(self, ptr: int, n: int | None = None) -> int:
        """Index of the largest of n f32 at ptr (default n: vocab)."""
        return self.call("kv_argmax", ptr, self.vocab if n is None else n)

    def seed(self, seed: int) -> None:
        """Seed the sampler's PCG32 (any int; its low 32 bits are used)."""
        s = seed & 0xFFFFFFFF
        self.call("kv_seed", s - (1 << 32) if s >= 1 << 31 else s)

    def sample(
        self, ptr: int, n: int | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
    ) -> int:
        """Sample a token from n logits at ptr (temperature <= 0: argmax)."""
        return self.call("kv_sample", ptr, self.vocab if n is None else n, float(temperature), top_k, float(top_p))

    # ---- quality statistics (wasm/stats.c)

    #: f32 words kv_logit_stats writes: log p_cmp(target), log p_ref(target), KL(ref ‖ cmp),
    #: top-1 agreement, entropy cmp, entropy ref, argmax cmp, argmax ref
    N_STATS = 8

    def logit_stats(self, ref: int, cmp: int, target: int, out: int) -> tuple[float, ...]:
        """Compare the logits at cmp with the reference logits at ref ((vocab,) f32 each) at
        a position whose next token is target; out: (N_STATS,) f32 scratch."""
        self.call("kv_logit_stats", ref, cmp, self.vocab, target, out)
        return struct.unpack(f"<{self.N_STATS}f", self.module.read(out, 4 * self.N_STATS))

    # ---- scratch memory and raw kernels (tests, benchmarks, tools)

    def alloc(self, n: int) -> int:
        return self.call("kv_alloc", n)

    def free(self, ptr: int) -> None:
        self.call("kv_free", ptr)

    def quantize(self, fmt: int | str, group: int, src: int, n: int, dst: int) -> int:
        """Quantize n f32 at src into dst; returns the bytes written."""
        return self.call("kv_quantize", formats.fmt(fmt), group, src, n, dst)

    def dequantize(self, fmt: int | str, group: int, src: int, n: int, dst: int) -> int:
        return self.call("kv_dequantize", formats.fmt(fmt), group, src, n, dst)
