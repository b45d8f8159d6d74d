// KV Cache Lab: the "Outliers and rotation" chart — one key's channels, on a <canvas>. The
// newest key one layer and KV head keep, as the model reads it, read from the store between
// runs (kvlab.keyChannels): its channels as bars around zero, and under them the same key
// after the random-sign Walsh-Hadamard rotation. Both panels share one y scale and one pair
// of ±RMS lines (the rotation keeps the norm, so the RMS is the same): the outliers of the
// first panel stand far outside the lines, the rotated key barely does. keyChartView()
// tells scripts and tests what it shows.

import { $, cssVar } from "./dom.js";
import { fmtInt } from "./format.js";
import { hexRgb } from "./keepmap.js";
import { body } from "./state.js";

const ui = {
  keys: $("#keychart"),
  keysLayer: $("#keys-layer"),
  keysHead: $("#keys-head"),
  keysEmpty: $("#keys-empty"),
  keysCaption: $("#keys-caption"),
  keysLesson: $("#keys-lesson"),
};

const KEYS_H = 200, KEYS_GAP = 10, KEYS_LABEL = 15;   // CSS px: the canvas, between its panels, a label
const NOTHING_CACHED = "nothing cached yet";
const keys = { data: null, error: null, seq: 0, draws: 0, queued: false, geom: null };

/** A field's value as a number, or as typed when it is not one: the engine says what is wrong. */
const fieldValue = (input) => (input.value.trim() !== "" && Number.isFinite(Number(input.value)) ? Number(input.value) : input.value);

/** Read the chosen key from the store (a newer read wins), then draw it. */
export async function refreshKeys() {
  if (!window.kvlab || body.dataset.state !== "ready") return;
  const seq = ++keys.seq;
  let data = null, error = null;
  try {
    data = await window.kvlab.keyChannels({ layer: fieldValue(ui.keysLayer), head: fieldValue(ui.keysHead) });
  } catch (err) {
    if (window.kvlab.busy) return;   // a run started: its end reads the key again
    error = err;
  }
  if (seq !== keys.seq) return;      // a newer read is under way
  keys.data = data;
  keys.error = error && !String(error.message).startsWith(NOTHING_CACHED) ? error : null;
  queueKeys();
}

/** Draw the key last read on the next frame. */
export function queueKeys() {
  if (keys.queued) return;
  keys.queued = true;
  requestAnimationFrame(drawKeys);
}

/** One panel: its label on a strip of its own, then a bar per channel around the zero
 *  line and the ±RMS lines. Returns where the bars are, for keyChartView. */
function drawKeyPanel(ctx, values, top, { W, h, lim, rms, dpr, colour, label }) {
  const labelH = Math.round(KEYS_LABEL * dpr), area = h - labelH, y0 = top + labelH;
  const mid = y0 + area / 2, scale = (area / 2) / lim, bw = W / values.length;
  ctx.font = `${Math.round(11 * dpr)}px ${cssVar("--sans") || "sans-serif"}`;
  ctx.textBaseline = "top";
  ctx.fillStyle = cssVar("--ink");
  ctx.fillText(label, 2 * dpr, top + 1 * dpr);
  ctx.fillStyle = "#f7f6f2";
  ctx.fillRect(0, y0, W, area);
  ctx.fillStyle = colour;
  const bars = values.map((v, i) => {
    const x0 = Math.round(i * bw), x1 = Math.max(x0 + 1, Math.round((i + 1) * bw) - Math.max(1, Math.round(dpr)));
    const px = Math.max(1, Math.abs(v * scale));
    ctx.fillRect(x0, v >= 0 ? mid - px : mid, x1 - x0, px);
    return [x0, x1];
  });
  ctx.fillStyle = cssVar("--line");
  ctx.fillRect(0, Math.round(mid), W, Math.max(1, Math.round(dpr)));
  ctx.strokeStyle = cssVar("--boundary");
  ctx.lineWidth = Math.max(1, dpr);
  ctx.setLineDash([4 * dpr, 3 * dpr]);
  for (const y of [mid - rms * scale, mid + rms * scale]) {
    ctx.beginPath(); ctx.moveTo(0, Math.round(y) + 0.5); ctx.lineTo(W, Math.round(y) + 0.5); ctx.stroke();
  }
  ctx.setLineDash([]);
  return { top: y0, height: area, mid, scale, bars, colour: hexRgb(colour) };
}

function drawKeys() {
  keys.queued = false;
  const cv = ui.keys, d = keys.data;
  const dpr = window.devicePixelRatio || 1;
  const W = Math.max(1, Math.round((cv.clientWidth || 600) * dpr)), H = Math.round(KEYS_H * dpr);
  const gap = Math.round(KEYS_GAP * dpr), h = Math.floor((H - gap) / 2);
  if (cv.width !== W) cv.width = W;
  if (cv.height !== H) { cv.height = H; cv.style.height = `${KEYS_H}px`; }
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, W, H);
  keys.geom = { width: W, height: H, panels: [] };
  if (d) {
    // one scale for both panels, so the rotated key's flatter profile is seen as it is
    const lim = 1.05 * Math.max(...d.channels.map(Math.abs), ...d.rotated.map(Math.abs), 1e-9);
    const rms = d.norm.before / Math.sqrt(d.channels.length);
    const common = { W, h, lim, rms, dpr };
    keys.geom.panels = [
      drawKeyPanel(ctx, d.channels, 0, { ...common, colour: cssVar("--k"), label: "before rotation" }),
      drawKeyPanel(ctx, d.rotated, h + gap, { ...common, colour: cssVar("--accent"), label: "after rotation (same norm)" }),
    ];
  }
  keys.draws += 1;
  Object.assign(cv.dataset, {
    draws: String(keys.draws), state: d ? "drawn" : keys.error ? "error" : "empty",
    layer: d ? String(d.layer) : "", head: d ? String(d.head) : "", position: d ? String(d.position) : "",
  });
  ui.keysEmpty.hidden = Boolean(d) || Boolean(keys.error);
  const text = keysCaption(d);
  ui.keysCaption.textContent = keys.error ? keys.error.message : text;
  ui.keysCaption.classList.toggle("error", Boolean(keys.error));
  cv.setAttribute("aria-label", `Key channels: ${text || (keys.error ? keys.error.message : "nothing cached yet")}`);
}

function keysCaption(d) {
  if (!d) return "";
  const f = (x) => x.toFixed(2);
  return `layer ${d.layer} · KV head ${d.head} · position ${fmtInt(d.position)}: peak / RMS ${f(d.peak_to_rms.before)} before`
    + ` → ${f(d.peak_to_rms.after)} after the rotation (the same norm, ${f(d.norm.before)})`;
}

/** What the key chart shows, for scripts and tests: the key drawn last and the geometry. */
export function keyChartView() {
  const d = keys.data;
  return {
    draws: keys.draws, state: ui.keys.dataset.state, error: keys.error ? keys.error.message : null,
    layer: d?.layer ?? null, head: d?.head ?? null, position: d?.position ?? null,
    channels: d ? d.channels.slice() : [], rotated: d ? d.rotated.slice() : [],
    peak_to_rms: d?.peak_to_rms ?? null, norm: d?.norm ?? null, caption: ui.keysCaption.textContent,
    ...(keys.geom || { width: ui.keys.width, height: ui.keys.height, panels: [] }),
  };
}

/** Under the chart, its lesson: lessons.json's number whose id is the chart's (none: hidden). */
export function showKeysLesson(numbers) {
  const keyLesson = (numbers || []).find((n) => n.id === ui.keys.id);
  ui.keysLesson.textContent = keyLesson?.text ?? "";
  ui.keysLesson.hidden = !keyLesson;
}

new ResizeObserver(() => queueKeys()).observe(ui.keys);
for (const input of [ui.keysLayer, ui.keysHead]) input.addEventListener("input", () => refreshKeys());
