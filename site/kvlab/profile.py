"""The head profiler: a map of every head and layer, the input of the per-head techniques.

Two short passes over diverse real text (``kvlab.texts.profile_texts``: prose, code,
reference documentation, a changelog list), on the full fp32 cache:

**Pass 1, reading.** For each text, the first ``context`` tokens are read in one run, then
``queries`` more are fed one token per run (teacher-forced). A one-token run's attention
row is one query's exact distribution over everything before it, so the statistics below
are exact per query, then averaged over queries and texts.

- *key collapse* (per KV head) — after the prefill, the cached keys are rotated back to
  their **pre-RoPE** values (``kv_rope_unrotate``: RoPE turns a key by an angle that grows
  with its position, so two equal keys at different positions look different after it) and
  their moments gathered per text (``kv_moments``). The score is the share of key energy
  carried by one mean key shared by all tokens of all texts::

      collapse = |mu|^2 / mean_t |k_t|^2,   mu = mean_t k_t over every token of every text

  It is in [0, 1]: 1 when every key is the same vector whatever the input (the head's
  routing no longer depends on content), near 0 when keys scatter around zero. And it says
  what the *collapsed heads* technique gains: replacing the keys by mu plus a residual
  leaves a residual with ``1 - collapse`` of the energy to store. Also reported: the mean
  cosine between the per-text mean keys (do different inputs share the direction?). The
  same two scores for values, as the contrast (KV collapse profiler, seed 000: values
  never collapse).
- *Rényi-2 entropy* (per query head, bits) — the graph's ``entropy`` output,
  -log2 sum_t p_t^2, at each query; per layer the mean over its heads (seed 002's H_2).
- *recent share* — attention mass on the last ``recent`` tokens (the query's own included);
  *sink mass* — on the first ``sinks`` tokens (``kv_range_sums``).
- *heavy hitters* — each query's attention over the ``context`` prefix is accumulated
  (``kv_add_rows``) and the share held by the top 1 %, 5 %, 20 % of tokens read off the
  concentration curve (``kv_cumshare``); also without the first ``sinks`` tokens.

**Pass 2, retrieving and cutting.**

- *retrieval score* (per query head) — a context of real text holds ``facts`` facts
  (``Remember this secret code: AMBER-FOX-7261.``, ``kvlab.tasks``); each is then asked and
  its four digits teacher-forced. At each digit prediction, the mass a head puts on the
  fact's digit tokens far back is its score for that step: the heads that look at the
  source span while the model copies are CompressKV's semantic retrieval heads (seed 003).
  Also: how many digits the model predicts right (it should be all).
- *layer sensitivity* (per layer) — on the first text, after its reading pass, the next
  ``positions`` tokens are fed with the full cache and their logits kept. Then for each
  layer alone the cache is rolled back (``kv_truncate``), that layer's past is cut to
  ``budget`` tokens (the first ``sinks`` and the most recent; the rest hidden from
  attention with ``kv_hide``), and the same tokens are fed again: the mean KL divergence
  from the full cache (``kv_logit_stats``) is the layer's degradation (CompressKV's
  offline layer budgets).
- *K vs V* — ``quant_positions`` positions there, after reading the same prefix with only
  the keys quantized (``quant_bits``, G 32), then only the values: mean KL each (seed
  001's second observation: key errors pass through the softmax, value errors do not).

Every loop over tokens or channels runs in the store (wasm/profile.c); Python adds up a
few numbers per head and step. The profile is one generator of model runs, so it runs on
the native host (``python -m kvlab profile``) and in the page alike.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import asdict, dataclass

from . import tasks as tasklib

FORMAT = "kvlab-profile-1"
TOP = (0.01, 0.05, 0.20)  # heavy-hitter shares: the top 1 %, 5 %, 20 % of tokens


class ProfileError(ValueError):
    """Settings or texts the profiler cannot use."""


class ProfileStopped(RuntimeError):
    """The caller asked the profile to stop (the page's Stop button); the store is reset."""


@dataclass(frozen=True)
class Settings:
    context: int = 512  # tokens read before the first query
    queries: int = 32  # one-token runs per text that measure attention
    recent: int = 128  # "the last 128 tokens"
    sinks: int = 4  # "the first tokens" (StreamingLLM keeps 4)
    facts: int = 4  # facts in the retrieval context
    positions: int = 16  # positions scored per cut layer
    quant_positions: int = 64  # positions scored for K only / V only: 4-bit rounding is
    #                            discontinuous, so 16 positions let float noise move the KL
    #                            by ~20 %; 64 keep it within a few %
    budget: int = 64  # tokens a cut layer keeps (sinks + most recent)
    quant_bits: int = 4  # the K-only / V-only quantization
    seed: int = 0  # picks the facts

    def check(self, max_context: int) -> None:
        for k, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "seed" else 1):
                raise ProfileError(f"{k} must be a whole number ≥ {0 if k == 'seed' else 1}, got {v!r}")
        if self.recent > self.context or self.sinks >= self.budget or self.budget > self.context:
            raise ProfileError("need sinks < budget ≤ context and recent ≤ context")
        if self.quant_bits not in (8, 4):
            raise ProfileError(f"quant_bits must be 8 or 4, got {self.quant_bits}")
        if self.context + self.queries + self.scored() > max_context:
            raise ProfileError(f"context + queries + positions exceeds the model's {max_context}")

    def scored(self) -> int:
        """Positions after the reading pass whose full-cache logits are kept."""
        return max(self.positions, self.quant_positions)


# ---------------------------------------------------------------------------------------
# Scratch memory in the store
# ---------------------------------------------------------------------------------------


class _Scratch:
    """Named buffers allocated in the store's memory, freed together."""

    def __init__(self, store):
        self.store, self.ptrs = store, []

    def __call__(self, nbytes: int) -> int:
        p = self.store.alloc(max(16, nbytes))
        self.ptrs.append(p)
        return p

    def free(self) -> None:
        for p in self.ptrs:
            self.store.free(p)
        self.ptrs = []


def _f32(module, ptr: int, n: int) -> tuple[float, ...]:
    return struct.unpack(f"<{n}f", module.read(ptr, 4 * n))


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


# ---------------------------------------------------------------------------------------
# The profile
# ---------------------------------------------------------------------------------------


class _Profiler:
    def __init__(self, engine, texts: list[dict], settings: Settings, on_progress=None, should_stop=None):
        c = engine.config
        settings.check(c["context"])
        if not texts:
            raise ProfileError("no texts to profile")
        self.e, self.s, self.texts = engine, settings, texts
        self.store, self.m = engine.store, engine.store.module
        self.L, self.H, self.K, self.D = c["n_layers"], c["n_heads"], c["n_kv_heads"], c["head_dim"]
        self.theta, self.vocab = float(c["rope_theta"]), c["vocab"]
        self.full = engine.apply({})
        self.on_progress, self.should_stop = on_progress, should_stop
        self.stage = ""
        self.ids = []
        need = settings.context + settings.queries + settings.scored()
        for t in texts:
            ids = engine.tokenizer.encode(t["text"])
            if len(ids) < need:
                raise ProfileError(f"text {t['name']!r} has {len(ids)} tokens; the profile needs {need}")
            self.ids.append(ids[:need])
        self.facts = self._facts()
        # model runs in all, for progress bars: reading, cutting, K only / V only, retrieval
        s, n0 = settings, settings.context + settings.queries
        self.done = 0
        runs = lambda n: len(self.full.plan(n, "prompt"))  # noqa: E731  (the engine's own plan)
        self.total = (len(texts) * (runs(s.context) + s.queries) + s.scored() + self.L * s.positions
                      + 2 * (runs(n0 - 1) + s.quant_positions)
                      + sum(runs(len(q) - 1) + len(f[1]) for q, f in zip(self.facts["questions"],
                                                                          self.facts["facts"])))

    # ---- running the model, counting runs

    def _tick(self):
        if self.should_stop is not None and self.should_stop():
            raise ProfileStopped(f"the profile was stopped after {self.done} of {self.total} runs")
        self.done += 1
        if self.on_progress is not None:
            self.on_progress({"stage": self.stage, "done": min(self.done, self.total), "total": self.total})

    def read(self, ids, start, pol):
        """Feed ids in the engine's runs; returns the logits pointer."""
        return (yield from self.e.runs(ids, start, pol, on_run=lambda table: self._tick()))

    def one(self, ids, start, pol):
        table = yield from self.e.step(ids, start, pol)
        self._tick()
        return table

    # ---- the whole profile

    def run(self):
        s, L, H, K, D, m = self.s, self.L, self.H, self.K, self.D, self.m
        t0 = self.e.host.now_ms()
        mem = _Scratch(self.store)
        try:
            n_txt = len(self.texts)
            # (L, K, 2 kinds, n_texts, D + 2) f64 moments: one (n_texts, D + 2) block per head and kind
            self.mom = mem(8 * L * K * 2 * n_txt * (D + 2))
            m.write(self.mom, bytes(8 * L * K * 2 * n_txt * (D + 2)))
            self.unrot = mem(4 * s.context * D)  # (context, D) f32: one head's pre-RoPE keys
            self.heavy = mem(4 * L * H * s.context)  # (L, H, context) f32 accumulated attention
            self.curve = mem(4 * s.context)  # (context,) f32 concentration curve
            self.sums = mem(4 * L * 2 * H)  # (L, 2, H) f32: recent, sinks per step
            self.ref = mem(4 * s.scored() * self.vocab)  # (scored, vocab) f32 kept logits
            self.out = mem(4 * max(self.store.N_STATS, 2))
            acc = {k: [[0.0] * H for _ in range(L)] for k in ("entropy", "recent", "sinks")}
            heavy = [[[0.0] * 6 for _ in range(H)] for _ in range(L)]  # top 1/5/20 %, with / without sinks
            n_q = 0
            sens = None
            for ti in range(n_txt):
                self.stage = f"reading {self.texts[ti]['kind']}"
                n_q += yield from self._reading(ti, acc, heavy)
                if ti == 0:
                    self.stage = "cutting one layer at a time"
                    sens = yield from self._sensitivity(self.ids[0])
            self.stage = "K only, V only"
            asym = yield from self._asymmetry(self.ids[0])
            self.stage = "retrieval"
            retr, copied = yield from self._retrieval()
            collapse = self._collapse()
        finally:
            mem.free()
            self.store.reset()
        seconds = (self.e.host.now_ms() - t0) / 1000
        return self._result(acc, n_q, heavy, collapse, retr, copied, sens, asym, seconds)

    # ---- pass 1: reading

    def _reading(self, ti: int, acc: dict, heavy: list):
        s, L, H, m = self.s, self.L, self.H, self.m
        ids = self.ids[ti]
        self.store.reset()
        self.full.configure(self.store)
        yield from self.read(ids[:s.context], 0, self.full)
        self._moments(ti, s.context)
        m.write(self.heavy, bytes(4 * L * H * s.context))
        for q in range(s.queries):
            n = s.context + q  # tokens before this query
            table = yield from self.one([ids[n]], n, self.full)
            for li, lay in enumerate(table.layers):
                stride = lay.P + 1  # [P past slots (empty ones have probability 0), the query itself]
                lo = max(0, n - (s.recent - 1))
                self.store.call("kv_range_sums", lay.attn, H, stride, lo, stride, self.sums + 4 * (2 * li) * H)
                self.store.call("kv_range_sums", lay.attn, H, stride, 0, s.sinks, self.sums + 4 * (2 * li + 1) * H)
                self.store.call("kv_add_rows", self.heavy + 4 * li * H * s.context, lay.attn, H, s.context, stride)
                ent = _f32(m, lay.entropy, H)
                row = acc["entropy"][li]
                for h in range(H):
                    row[h] += ent[h]
            sums = _f32(m, self.sums, L * 2 * H)
            for li in range(L):
                for h in range(H):
                    acc["recent"][li][h] += sums[(2 * li) * H + h]
                    acc["sinks"][li][h] += sums[(2 * li + 1) * H + h]
        # heavy hitters of this text: the top shares of each head's accumulated attention
        C, k_s = s.context, s.sinks
        for li in range(L):
            for h in range(H):
                base = self.heavy + 4 * (li * H + h) * C
                for j, (ptr, n) in enumerate(((base, C), (base + 4 * k_s, C - k_s))):
                    self.store.call("kv_cumshare", ptr, n, self.curve)
                    curve = _f32(m, self.curve, n)
                    for f, frac in enumerate(TOP):
                        heavy[li][h][3 * j + f] += curve[max(1, math.ceil(frac * n)) - 1]
        return s.queries

    def _moments(self, ti: int, n: int) -> None:
        """Moments of the n cached keys (pre-RoPE) and values of every layer and KV head."""
        K, D = self.K, self.D
        blk = 8 * (D + 2)
        for li in range(self.L):
            P = self.store.capacity(li)
            k_ptr, v_ptr = (self.store.call("kv_layer_ptr", li, w) for w in (0, 1))
            for h in range(K):
                off = 4 * h * P * D  # staging is (K, P, D)
                dst = self.mom + blk * ((((li * K + h) * 2 + 0) * len(self.texts)) + ti)
                self.store.call("kv_rope_unrotate", k_ptr + off, n, D, 0, self.theta, self.unrot)
                self.store.call("kv_moments", self.unrot, n, D, dst)
                dst = self.mom + blk * ((((li * K + h) * 2 + 1) * len(self.texts)) + ti)
                self.store.call("kv_moments", v_ptr + off, n, D, dst)

    def _collapse(self) -> dict:
        K, D, m, n_txt = self.K, self.D, self.m, len(self.texts)
        blk = 8 * (D + 2) * n_txt
        out = {k: [[0.0] * K for _ in range(self.L)] for k in ("key", "key_cos", "value", "value_cos", "key_mean")}
        for li in range(self.L):
            for h in range(K):
                for kind, name in ((0, "key"), (1, "value")):
                    self.store.call("kv_moment_scores", self.mom + blk * ((li * K + h) * 2 + kind), n_txt, D, self.out)
                    share, cos = _f32(m, self.out, 2)
                    out[name][li][h], out[name + "_cos"][li][h] = share, cos
                # mu itself: the channel sums over every text / their token count (per text
                # the moments are (D sums, energy, count) in f64), what `collapse` stores keys
                # against when its mean comes from the profile
                mom = struct.unpack(f"<{n_txt * (D + 2)}d", m.read(self.mom + blk * ((li * K + h) * 2), blk))
                rows = [mom[t * (D + 2):(t + 1) * (D + 2)] for t in range(n_txt)]
                count = sum(r[D + 1] for r in rows)
                out["key_mean"][li][h] = [sum(r[j] for r in rows) / count for j in range(D)]
        return out

    # ---- pass 2: layer sensitivity and K vs V

    def _scored_runs(self, ids, n0: int, n: int, keep: bool, pol=None):
        """Feed ids[n0-1 : n0-1+n] one per run, so the runs predict ids[n0 : n0+n]; keep
        their logits (the reference) or compare them with the kept ones (mean KL)."""
        v4 = 4 * self.vocab
        kl = 0.0
        for j in range(n):
            table = yield from self.one([ids[n0 - 1 + j]], n0 - 1 + j, pol or self.full)
            if keep:
                self.store.call("kv_memcpy", self.ref + j * v4, table.logits, v4)
            else:
                kl += self.store.logit_stats(self.ref + j * v4, table.logits, ids[n0 + j], self.out)[2]
        return kl / n

    def _sensitivity(self, ids):
        """Per layer: mean KL when only that layer's past is cut to the budget."""
        s = self.s
        n0 = s.context + s.queries  # the reading pass left n0 tokens; score n0 .. n0+positions-1
        self.store.truncate(n0 - 1)
        yield from self._scored_runs(ids, n0, s.scored(), keep=True)
        keep_recent = s.budget - s.sinks
        out = []
        for li in range(self.L):
            self.store.truncate(n0 - 1)
            hi = (n0 - 1) - keep_recent
            if hi > s.sinks:
                self.store.hide(li, s.sinks, hi)
            out.append((yield from self._scored_runs(ids, n0, s.positions, keep=False)))
            self.store.truncate(n0 - 1)
            if hi > s.sinks:
                self.store.hide(li, s.sinks, hi, hidden=False)
        return out

    def _asymmetry(self, ids):
        """Mean KL with only K quantized, then only V (the kept logits are the reference)."""
        s = self.s
        n0 = s.context + s.queries
        out = {}
        for name, pol in (("k_only", {"quant": {"k_bits": s.quant_bits}}),
                          ("v_only", {"quant": {"v_bits": s.quant_bits}})):
            pol = self.e.apply(pol)
            self.store.reset()
            pol.configure(self.store)
            yield from self.read(ids[:n0 - 1], 0, pol)
            out[name] = yield from self._scored_runs(ids, n0, s.quant_positions, keep=False, pol=pol)
        return out

    # ---- pass 2: retrieval

    def _facts(self) -> dict:
        """The retrieval context: real text with the facts spliced in, the questions (each
        chunk to read before its answer), and where each fact's digits sit."""
        s, tok = self.s, self.e.tokenizer
        rng = random.Random(f"kvlab-profile-{s.seed}")
        keys, codes = tasklib._keys(rng, s.facts), tasklib._codes(rng, s.facts)
        depths = [(i + 0.5) / (s.facts + 1) for i in range(s.facts)]  # spread, in order
        sentences = [tasklib.CODE_SENTENCE.format(key=k, code=c) for k, c in zip(keys, codes)]
        filler = tok.encode("\n\n".join(t["text"] for t in self.texts[2:] + self.texts[:2]))[: s.context]
        # each fact is a paragraph of its own, inserted at the first line break at or after
        # its depth (as kvlab.tasks does), so no word of the text is cut
        breaks = [i + 1 for i, t in enumerate(filler) if "\n" in tok.decode([t])]
        ctx, spans, prev = [], [], 0
        for depth, sen, code in zip(depths, sentences, codes):
            want = int(depth * len(filler))
            cut = max(prev, next((i for i in breaks if i >= want), want))
            ctx += filler[prev:cut]
            fact = tok.encode(tasklib.FACT_WRAP.format(sen))
            spans.append(len(ctx) + _digit_offset(tok, tasklib.FACT_WRAP.format(sen), code))
            ctx += fact
            prev = cut
        ctx += filler[prev:]
        facts, questions = [], []
        pending = ctx
        for key, code, span in zip(keys, codes, spans):
            digits = [tok.encode(ch)[0] for ch in code]
            facts.append((span, digits))
            questions.append(pending + tok.encode(tasklib.QUESTION_WRAP.format(tasklib.CODE_QUESTION.format(key=key))))
            pending = [digits[-1]] + tok.encode(".")  # the last digit is fed with the next question
        return {"facts": facts, "questions": questions, "keys": keys}

    def _retrieval(self):
        L, H, m = self.L, self.H, self.m
        self.store.reset()
        self.full.configure(self.store)
        score = [[0.0] * H for _ in range(L)]
        steps = copied = 0
        pos = 0
        for q, (span, digits) in zip(self.facts["questions"], self.facts["facts"]):
            yield from self.read(q[:-1], pos, self.full)
            pos += len(q) - 1
            feed = q[-1]
            for d in digits:  # the run whose input is `feed` predicts digit d
                table = yield from self.one([feed], pos, self.full)
                pos += 1
                copied += self.store.argmax(table.logits, self.vocab) == d
                for li, lay in enumerate(table.layers):
                    self.store.call("kv_range_sums", lay.attn, H, lay.P + 1, span, span + len(digits),
                                    self.sums + 4 * li * H)
                sums = _f32(m, self.sums, L * H)
                for li in range(L):
                    for h in range(H):
                        score[li][h] += sums[li * H + h]
                steps += 1
                feed = d
        return [[v / steps for v in row] for row in score], (copied, steps)

    # ---- the result

    def _result(self, acc, n_q, heavy, collapse, retr, copied, sens, asym, seconds) -> dict:
        s, L, H, K, G = self.s, self.L, self.H, self.K, self.H // self.K
        nq = n_q  # queries over all texts
        ent = [[v / nq for v in row] for row in acc["entropy"]]
        rec = [[v / nq for v in row] for row in acc["recent"]]
        snk = [[v / nq for v in row] for row in acc["sinks"]]
        n_txt = len(self.texts)
        hv = [[[v / n_txt for v in head] for head in layer] for layer in heavy]
        layer_heavy = [[_mean(hv[li][h][j] for h in range(H)) for j in range(6)] for li in range(L)]

        def metric(values, per, unit, doc):
            return {"per": per, "unit": unit, "doc": doc, "values": _round(values)}

        metrics = {
            "key_collapse": metric(collapse["key"], "kv_head", "share",
                                   "share of pre-RoPE key energy carried by the head's mean key over all texts"),
            "value_collapse": metric(collapse["value"], "kv_head", "share", "the same score for values (the contrast)"),
            "key_cross_input_cosine": metric(collapse["key_cos"], "kv_head", "cosine",
                                             "mean cosine between the per-text mean pre-RoPE keys"),
            "value_cross_input_cosine": metric(collapse["value_cos"], "kv_head", "cosine",
                                               "mean cosine between the per-text mean values"),
            "entropy": metric(ent, "q_head", "bits", "Rényi-2 entropy of attention, -log2 Σ p², mean over queries"),
            "recent_share": metric(rec, "q_head", "share", f"attention mass on the last {s.recent} tokens"),
            "sink_mass": metric(snk, "q_head", "share", f"attention mass on the first {s.sinks} tokens"),
            "retrieval": metric(retr, "q_head", "share",
                                "attention mass on a far-back fact's digits while the model copies them"),
            "kv_head_entropy": metric([[_mean(ent[li][k * G:(k + 1) * G]) for k in range(K)] for li in range(L)],
                                      "kv_head", "bits", "mean Rényi-2 entropy of the KV head's query heads"),
            "layer_entropy": metric([_mean(r) for r in ent], "layer", "bits", "mean Rényi-2 entropy of the layer's heads"),
            "layer_recent_share": metric([_mean(r) for r in rec], "layer", "share",
                                         f"mean attention mass on the last {s.recent} tokens"),
            "layer_sensitivity": metric(sens, "layer", "nats",
                                        f"mean KL vs the full cache when only this layer keeps {s.budget} tokens"),
        }
        for j, frac in enumerate(TOP):
            pct = round(frac * 100)
            metrics[f"heavy_top{pct}"] = metric([r[j] for r in layer_heavy], "layer", "share",
                                                f"share of accumulated attention held by the top {pct}% of tokens")
            metrics[f"heavy_top{pct}_no_sinks"] = metric(
                [r[3 + j] for r in layer_heavy], "layer", "share",
                f"the same without the first {s.sinks} tokens")
        return {
            "format": FORMAT,
            "model": {k: self.e.config.get(k) for k in ("name", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                                                        "rope_theta", "gguf_sha256")},
            "settings": asdict(s),
            "texts": [{k: t[k] for k in ("kind", "name", "sha256")} | {"tokens_used": len(ids)}
                      for t, ids in zip(self.texts, self.ids)],
            "queries_measured": nq,
            "retrieval_digits_copied": {"right": copied[0], "of": copied[1]},
            "quant_asymmetry_kl": _round(asym) | {"bits": s.quant_bits, "group": 32},
            "metrics": metrics,
            "key_means": {"per": "kv_head", "unit": "pre-RoPE key (head_dim values)",
                          "doc": "the mean pre-RoPE key of each KV head over every token of every text (the mu of "
                                 "key_collapse)", "values": [[[float(f"{v:.7g}") for v in mu] for mu in layer]
                                                             for layer in collapse["key_mean"]]},
            "candidates": _candidates(metrics, L, H, K),
            "seconds": round(seconds, 2),
            "host": self.e.host.name,
            "store": self.e.host.variant,
        }


def _digit_offset(tok, fact_text: str, code: str) -> int:
    """Where a fact's code digits start among the fact paragraph's tokens (each digit is a
    token of its own: the pre-tokenizer splits numbers into digits)."""
    ids = tok.encode(fact_text)
    pieces = [tok.decode([i]) for i in ids]
    for i in range(len(pieces) - len(code) + 1):
        if "".join(pieces[i:i + len(code)]) == code:
            return i
    raise ProfileError(f"code {code} not found in the tokens of {fact_text!r}")


def _round(x, nd: int = 6):
    if isinstance(x, dict):
        return {k: _round(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v, nd) for v in x]
    return round(x, nd) if isinstance(x, float) else x


# ---------------------------------------------------------------------------------------
# Candidates: the profile as ranked lists other tools can read
# ---------------------------------------------------------------------------------------

SINK_SHARE = 0.02  # the lowest-entropy ~2 % of heads (seed 002)


def _candidates(metrics: dict, L: int, H: int, K: int) -> dict:
    col = metrics["key_collapse"]["values"]
    ent = metrics["entropy"]["values"]
    ret = metrics["retrieval"]["values"]
    sens = metrics["layer_sensitivity"]["values"]
    kv = sorted(((col[li][h], li, h) for li in range(L) for h in range(K)), reverse=True)
    heads = sorted((ent[li][h], li, h) for li in range(L) for h in range(H))
    n_sink = max(1, round(SINK_SHARE * L * H))
    rh = sorted(((ret[li][h], li, h) for li in range(L) for h in range(H)), reverse=True)
    return {
        "doc": ("Ranked lists, best candidate first. collapsed_keys: KV heads whose keys a mean key plus a "
                "small residual can replace (seed 000); protect_low_entropy: query heads to keep at full "
                "precision (the lowest-entropy ~2 %, seed 002); retrieval_heads: query heads that should "
                "choose which tokens stay (seed 003); layers_cheapest_first: layers to give the smallest "
                "budget first (seed 003)."),
        "collapsed_keys": [{"layer": li, "kv_head": h, "key_collapse": round(v, 6)} for v, li, h in kv],
        "protect_low_entropy": [{"layer": li, "q_head": h, "entropy_bits": round(v, 6)}
                                for v, li, h in heads[:n_sink]],
        "retrieval_heads": [{"layer": li, "q_head": h, "retrieval": round(v, 6)} for v, li, h in rh[:L]],
        "layers_cheapest_first": [{"layer": li, "kl": round(v, 7)}
                                  for v, li in sorted((sens[li], li) for li in range(L))],
    }


# ---------------------------------------------------------------------------------------
# Drivers
# ---------------------------------------------------------------------------------------


def profile(engine, texts: list[dict], settings: Settings | None = None, on_progress=None,
            should_stop=None) -> dict:
    """Profile on a synchronous host (native); returns the ``profile.json`` object.
    ``on_progress`` gets {stage, done, total} after each model run; ``should_stop()`` is
    polled as often (True: ``ProfileStopped``)."""
    return engine.drive(_Profiler(engine, texts, settings or Settings(), on_progress, should_stop).run())


async def profile_async(engine, texts: list[dict], settings: Settings | None = None, on_progress=None,
                        should_stop=None) -> dict:
    """Profile on an asynchronous host (the page)."""
    return await engine.drive_async(
        _Profiler(engine, texts, settings or Settings(), on_progress, should_stop).run())
