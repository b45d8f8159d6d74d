// KV Cache Lab: the memory meter — the "KV cache memory" card's numbers, per-layer bars and
// bits-per-head map, from a token event or a run's result. It shows the cache held (rows
// and their index) and, apart, the working memory (fp32 staging and step buffers), both as
// the store reports them, the ratios to fp32 and fp16 for the same tokens, and the saving
// split into its eviction and quantization factors as the engine's `savings` measures them.

import { $ } from "./dom.js";
import { fmtBytes, fmtInt, fmtMs, fmtRatio, sum } from "./format.js";
import { HEAD_DIM, N_LAYERS } from "./state.js";

const ui = {
  total: $("#meter-total"),
  index: $("#meter-index"),
  working: $("#meter-working"),
  savings: $("#meter-savings"),
  fp32: $("#meter-fp32"),
  fp16: $("#meter-fp16"),
  ratio: $("#meter-ratio"),
  bars: $("#layer-bars"),
};
ui.bars.style.setProperty("--n-layers", String(N_LAYERS));
$("#head-bits").style.setProperty("--n-layers", String(N_LAYERS));

const barEls = [...ui.bars.querySelectorAll("[data-layer]")];

function setBytes(node, n) {
  node.dataset.bytes = String(n);
  node.textContent = fmtBytes(n);
}

/** The meter from a token event or a result: the cache held (rows + index) and, apart, the
 *  working memory (fp32 staging + step buffers), both as the store reports them. */
export function setMeter(m) {
  const held = m.cache_bytes || 0;
  const fp32 = m.fp32_bytes || 0;
  const fp16 = m.fp16_bytes || 0;
  const index = m.index_bytes || 0;
  setBytes(ui.total, held);
  setBytes(ui.index, index);
  setBytes(ui.working, m.working_bytes || 0);
  ui.fp32.dataset.bytes = String(fp32);
  ui.fp32.textContent = fmtBytes(fp32);
  ui.fp16.dataset.bytes = String(fp16);
  ui.fp16.textContent = fmtBytes(fp16);
  if (held > 0 && fp32 > 0) {
    const r32 = fp32 / held;
    const r16 = fp16 / held;
    const vs16 = r16 >= 1.005 ? `${fmtRatio(r16)}× smaller than fp16` : r16 <= 0.995 ? `${fmtRatio(1 / r16)}× the fp16 size` : "same as fp16";
    ui.ratio.textContent = Math.abs(r32 - 1) < 0.005 ? `the full fp32 cache · ${vs16}` : `${fmtRatio(r32)}× smaller than fp32 · ${vs16}`;
  } else ui.ratio.textContent = "—";
  const tokens = m.tokens_cached || 0;
  $("#stat-tokens").textContent = fmtInt(tokens);
  $("#stat-bpt").textContent = tokens ? fmtBytes(held / tokens) : "—";
  // live entries per KV head, and the saving split as the engine's `savings` measures it:
  // eviction = entries appended / kept, quantization = fp32 bytes of the kept / their rows
  const kept = (m.kept || []).flat();
  const keptSum = sum(kept);
  $("#stat-kept").textContent = tokens && kept.length ? fmtInt(keptSum / kept.length) : "—";
  const evict = m.savings?.eviction ?? (keptSum ? (tokens * kept.length) / keptSum : null);
  const quant = m.savings?.quantization ?? (held - index > 0 ? (keptSum * 8 * HEAD_DIM) / (held - index) : null);
  // each factor measured on the store; their product is the total but for the index's bytes
  const total = held > 0 ? fp32 / held : null;
  ui.savings.textContent = tokens && evict && quant
    ? `eviction ${fmtRatio(evict)}× × quantization ${fmtRatio(quant)}× = ${fmtRatio(total)}× in all (the index included)` : "—";

  const layers = m.layer_bytes || [];
  const layerIndex = m.layer_index_bytes || [];
  const partFp32 = fp32 / N_LAYERS / 2; // one layer's K (or V) in fp32 for the same tokens
  barEls.forEach((b, i) => {
    const [k, v] = layers[i] || [0, 0];
    const ix = layerIndex[i] || 0;
    const heads = m.kept?.[i] || [];
    b.dataset.kBytes = String(k);
    b.dataset.vBytes = String(v);
    b.dataset.indexBytes = String(ix);
    b.dataset.kept = heads.join(",");
    const kh = partFp32 > 0 ? Math.min(1, k / partFp32) : 0;
    const vh = partFp32 > 0 ? Math.min(1, v / partFp32) : 0;
    b.children[0].firstElementChild.style.height = `${(kh * 100).toFixed(1)}%`;
    b.children[1].firstElementChild.style.height = `${(vh * 100).toFixed(1)}%`;
    b.title = `layer ${i}: K ${fmtBytes(k)} · V ${fmtBytes(v)} · index ${fmtBytes(ix)}`
      + (heads.length ? ` · kept per KV head ${heads.map(fmtInt).join(" / ")}` : "")
      + (partFp32 ? ` (fp32: ${fmtBytes(partFp32)} each)` : "");
  });
  if (m.head_bits) setHeadBits(m.head_bits, m.head_collapsed);
}

/** The bits-per-head map: each KV head's key and value width (m.head_bits: per layer, per
 *  KV head, [K bits, V bits]); a collapsed head's keys (m.head_collapsed: 1) are marked μ,
 *  their width being the residual's beside one mean key. Redrawn only when they change. */
function setHeadBits(bits, collapsed) {
  const key = JSON.stringify([bits, collapsed || []]);
  const grid = $("#head-bits");
  if (grid.dataset.shown === key) return;
  grid.dataset.shown = key;
  for (const c of grid.querySelectorAll(".hb")) {
    const layer = Number(c.dataset.layer), head = Number(c.dataset.head), isK = c.dataset.part === "K";
    const b = bits[layer]?.[head]?.[isK ? 0 : 1];
    if (b === undefined) continue;
    const mu = isK && Boolean(collapsed?.[layer]?.[head]);
    c.dataset.bits = String(b);
    c.dataset.collapsed = String(mu);
    c.textContent = mu ? `μ${b || ""}` : String(b);
    c.title = `layer ${layer} · KV head ${head} · ${c.dataset.part}: `
      + (mu ? (b ? `collapsed: one mean key + a ${b}-bit residual per key` : "collapsed: the mean key alone")
            : `${b} bits`);
  }
}

/** The speed figures: ms and tokens per second, and (when given) first token and prefill. */
export function setSpeed({ msPerToken, ttft, prefill }) {
  $("#stat-mspt").textContent = fmtMs(msPerToken);
  $("#stat-tps").textContent = Number.isFinite(msPerToken) && msPerToken > 0 ? (1000 / msPerToken).toFixed(1) : "—";
  if (ttft !== undefined) $("#stat-ttft").textContent = fmtMs(ttft);
  if (prefill !== undefined) $("#stat-prefill").textContent = fmtMs(prefill);
}

/** An empty cache: every number back to zero, the speeds unknown. */
export function zeroMeter() {
  setMeter({ cache_bytes: 0, index_bytes: 0, working_bytes: 0, fp32_bytes: 0, fp16_bytes: 0, tokens_cached: 0, layer_bytes: [], kept: [] });
  for (const id of ["#stat-tps", "#stat-mspt", "#stat-ttft", "#stat-prefill"]) $(id).textContent = "—";
}
