// KV Cache Lab: the cache map — which entries each layer keeps, drawn on a <canvas> from
// each token event's `cache_map` (the page generates with cacheMap: true; a script's run
// that did not ask for it is read from the store once it ends). A row per layer, a column
// per position (the prompt, then the generated tokens), the boundary between them marked;
// a tooltip (pointer or arrow keys) names a cell's token and the KV heads that keep it.
// cacheMapView() tells scripts and tests what the canvas shows.

import { $, cssVar, el } from "./dom.js";
import { fmtInt, sum } from "./format.js";
import { SHADES, paintKeepMap } from "./keepmap.js";
import { N_LAYERS, body, state } from "./state.js";

const ui = {
  map: $("#cachemap"),
  mapFrame: $("#map-frame"),
  mapTip: $("#map-tip"),
  mapEmpty: $("#map-empty"),
  mapSummary: $("#map-summary"),
  mapBoundary: $("#map-boundary"),
  mapEnd: $("#map-end"),
};

// A cell's shade is how many of the layer's KV heads keep the entry: the set bits of its
// map character (the bit mask '0'..'7' the store's kv_keep_map writes). Drawn in device
// pixels: with more positions than pixels a column shows the mean over its positions (a
// thin kept band still shows), with fewer a position spans several columns. At most once a
// frame.

const MAP_ROW = 5, MAP_GAP = 1;   // CSS px: a layer's row, the gap between rows
const shadeIndex = (k, heads) => Math.round((k / heads) * 255);
const shadeRgb = (i) => [SHADES[i] & 255, (SHADES[i] >> 8) & 255, (SHADES[i] >> 16) & 255];
let mapQueued = false;
let mapGeom = { rowH: MAP_ROW, gap: MAP_GAP, dpr: 1 };
let mapCursor = null;   // the cell the keyboard points at: {layer, pos}

/** Draw state.map on the next frame. */
export function queueMap() {
  if (mapQueued) return;
  mapQueued = true;
  requestAnimationFrame(drawMap);
}

function drawMap() {
  mapQueued = false;
  const m = state.map, cv = ui.map;
  const T = m ? m.tokens : 0;
  const L = m ? m.layers.length : N_LAYERS;
  const dpr = window.devicePixelRatio || 1;
  const W = Math.max(1, Math.round((cv.clientWidth || 600) * dpr));
  const rowH = Math.max(1, Math.round(MAP_ROW * dpr)), gap = Math.max(1, Math.round(MAP_GAP * dpr));
  const H = L * (rowH + gap) - gap;
  if (cv.width !== W) cv.width = W;
  if (cv.height !== H) { cv.height = H; cv.style.height = `${H / dpr}px`; }
  mapGeom = { rowH, gap, dpr };
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, W, H);
  if (T > 0) {
    paintKeepMap(ctx, m.layers, T, m.kv_heads, { W, rowH, gap });
    if (m.prompt > 0 && m.prompt < T) {   // where the prompt ends and the generated tokens begin
      ctx.fillStyle = cssVar("--boundary");
      ctx.fillRect(Math.min(W - 1, Math.round((m.prompt / T) * W)), 0, Math.max(1, Math.round(dpr)), H);
    }
  }
  state.drawn = m;
  state.draws += 1;
  cv.dataset.tokens = String(T);
  cv.dataset.rows = String(L);
  cv.dataset.index = m && Number.isFinite(m.index) ? String(m.index) : "";
  cv.dataset.draws = String(state.draws);
  ui.mapEmpty.hidden = T > 0;
  ui.mapEnd.textContent = T ? `position ${fmtInt(T - 1)}` : "";
  const split = m && m.prompt > 0 && m.prompt < T;
  ui.mapBoundary.hidden = !split;
  if (split) {
    const at = m.prompt / T;
    ui.mapBoundary.style.left = `${(at * 100).toFixed(2)}%`;
    ui.mapBoundary.classList.toggle("flip", at > 0.5);
    ui.mapBoundary.textContent = `prompt ${fmtInt(m.prompt)} · generated ${fmtInt(T - m.prompt)}`;
  }
  const text = mapSummaryText(m);
  ui.mapSummary.textContent = text;
  cv.setAttribute("aria-label", `Cache map: ${text || "empty"}`);
  if (mapCursor && m && T) showTipAt(Math.min(mapCursor.layer, L - 1), Math.min(mapCursor.pos, T - 1));
  else if (!T) hideTip();
}

function mapSummaryText(m) {
  if (!m || !m.tokens) return "";
  const T = m.tokens;
  const parts = [m.prompt > 0 ? `${fmtInt(T)} positions: ${fmtInt(Math.min(m.prompt, T))} of the prompt, ${fmtInt(Math.max(0, T - m.prompt))} generated`
    : `${fmtInt(T)} positions`];
  const kept = (m.kept || []).flat();
  if (kept.length) {
    const avg = sum(kept) / kept.length;
    parts.push(`${fmtInt(avg)} kept per KV head on average (${((100 * avg) / T).toFixed(1)} %)`);
    const perLayer = m.kept.map((r) => sum(r) / r.length);
    const lo = Math.min(...perLayer), hi = Math.max(...perLayer);
    parts.push(hi - lo >= 1 ? `layers keep ${fmtInt(lo)} to ${fmtInt(hi)} per head` : "every layer keeps the same number");
  }
  return parts.join(" · ");
}

// ---- the tooltip ------------------------------------------------------------------------

/** The cell under a pointer event: {layer, pos} (null outside the drawn map). */
function mapCellAt(ev) {
  const m = state.drawn;
  if (!m || !m.tokens) return null;
  const r = ui.map.getBoundingClientRect();
  const x = ev.clientX - r.left, y = ev.clientY - r.top;
  if (x < 0 || y < 0 || x >= r.width || y >= r.height) return null;
  const yPx = (y * ui.map.height) / r.height;
  const pitch = mapGeom.rowH + mapGeom.gap;
  if (yPx % pitch >= mapGeom.rowH + mapGeom.gap / 2) return null;   // in a gap: nothing
  return { layer: Math.min(m.layers.length - 1, Math.floor(yPx / pitch)), pos: Math.min(m.tokens - 1, Math.floor((x / r.width) * m.tokens)) };
}

/** The tooltip of one cell: its token, its position, which heads keep it. */
function showTipAt(layer, pos) {
  const m = state.drawn;
  if (!m || !m.tokens) return hideTip();
  const mask = parseInt(m.layers[layer]?.[pos] ?? "0", 32) || 0;
  const heads = [...Array(m.kv_heads).keys()].filter((h) => mask & (1 << h));
  const where = m.prompt > 0 ? (pos < m.prompt ? "prompt" : "generated") : "";
  const text = m.texts?.[pos];
  ui.mapTip.replaceChildren(
    el("div", {}, el("strong", { text: `layer ${layer}` }), ` · position ${fmtInt(pos)}${where ? ` (${where})` : ""}`),
    el("div", { class: "tok", text: text === undefined ? "(its text: generate with cacheMap: true)" : JSON.stringify(text) }),
    el("div", { text: heads.length ? `kept by KV head${heads.length > 1 ? "s" : ""} ${heads.join(", ")} (${heads.length} of ${m.kv_heads})`
      : `evicted from all ${m.kv_heads} KV heads` }));
  Object.assign(ui.mapTip.dataset, { layer: String(layer), position: String(pos), mask: String(mask) });
  ui.mapTip.hidden = false;
  // beside the cell, inside the frame
  const fw = ui.mapFrame.clientWidth, cw = ui.map.clientWidth;
  const cx = ((pos + 0.5) / m.tokens) * cw;
  const cy = (layer * (mapGeom.rowH + mapGeom.gap)) / mapGeom.dpr;
  const tw = ui.mapTip.offsetWidth;
  ui.mapTip.style.left = `${Math.max(0, cx + 14 + tw > fw ? cx - 14 - tw : cx + 14)}px`;
  ui.mapTip.style.top = `${cy + 10}px`;
}

function hideTip() {
  ui.mapTip.hidden = true;
}

function onMapPointer(ev) {
  const c = mapCellAt(ev);
  if (!c) return hideTip();
  mapCursor = null;
  showTipAt(c.layer, c.pos);
}

/** Arrow keys walk the cells (Shift: 10 positions, Home/End: the row's ends). */
function onMapKey(ev) {
  const m = state.drawn;
  if (!m || !m.tokens) return;
  const c = mapCursor || { layer: 0, pos: 0 };
  const step = ev.shiftKey ? 10 : 1;
  const moves = { ArrowLeft: [0, -step], ArrowRight: [0, step], ArrowUp: [-1, 0], ArrowDown: [1, 0], Home: [0, -Infinity], End: [0, Infinity] };
  if (ev.key === "Escape") { mapCursor = null; hideTip(); return; }
  if (!(ev.key in moves)) return;
  ev.preventDefault();
  const [dl, dp] = moves[ev.key];
  mapCursor = { layer: Math.max(0, Math.min(m.layers.length - 1, c.layer + dl)), pos: Math.max(0, Math.min(m.tokens - 1, c.pos + dp)) };
  showTipAt(mapCursor.layer, mapCursor.pos);
}

// ---- what a run feeds it ------------------------------------------------------------------

/** A token event's map: positions 0..P-1 are the prompt's (their texts come once, with the
 *  first event), P + i is generated token i (cached once it has been fed back). */
export function onMapEvent(run, d) {
  run.sawMap = true;
  if (d.index === 0 || run.prompt === null) {
    run.prompt = Array.isArray(d.prompt_tokens) ? d.prompt_tokens.length : d.tokens_cached - d.index;
    if (Array.isArray(d.prompt_tokens)) run.texts = d.prompt_tokens.slice();
  }
  if (typeof d.token_text === "string") run.texts[run.prompt + d.index] = d.token_text;
  state.map = { ...d.cache_map, index: d.index, prompt: run.prompt, texts: run.texts };
  queueMap();
}

/** A run that did not ask for the map (a script's): read it from the store once it ends. */
export async function refreshMapFromStore(result) {
  try {
    const cm = await window.kvlab.cachemap({ positions: false });
    state.map = { ...cm, index: null, prompt: result?.prompt_ids?.length ?? null, texts: undefined };
    queueMap();
  } catch { /* busy again (the next run started): its end refreshes it */ }
}

/** The cache is empty (Reset): no map, no keyboard cursor. */
export function clearMap() {
  state.map = null;
  mapCursor = null;
  queueMap();
}

/** What the canvas shows, for scripts and tests: the map drawn last and how it is drawn. */
export function cacheMapView() {
  const m = state.drawn;
  const heads = m?.kv_heads || Number(body.dataset.nKvHeads) || 3;
  return {
    draws: state.draws, index: m?.index ?? null, tokens: m?.tokens ?? 0, prompt: m?.prompt ?? null,
    kv_heads: heads, rows: m ? m.layers.length : 0, layers: m ? m.layers.slice() : [], kept: m?.kept ?? [],
    texts: m?.texts ? m.texts.slice() : [],
    width: ui.map.width, height: ui.map.height, rowPx: mapGeom.rowH, gapPx: mapGeom.gap,
    colours: [...Array(heads + 1).keys()].map((k) => shadeRgb(shadeIndex(k, heads))),
  };
}

// ---- set-up -------------------------------------------------------------------------------

for (const sw of document.querySelectorAll("#map-legend .swatch[data-heads]")) {
  const heads = Number(body.dataset.nKvHeads) || 3;
  sw.style.background = `rgb(${shadeRgb(shadeIndex(Number(sw.dataset.heads), heads)).join(",")})`;
}
new ResizeObserver(() => queueMap()).observe(ui.map);

ui.map.addEventListener("pointermove", onMapPointer);
ui.map.addEventListener("pointerleave", () => { if (!mapCursor) hideTip(); });
ui.map.addEventListener("keydown", onMapKey);
ui.map.addEventListener("blur", () => { mapCursor = null; hideTip(); });
