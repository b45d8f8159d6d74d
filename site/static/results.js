// KV Cache Lab: the results page's charts — every committed point, compression vs quality.
//
// results_all.json (the builder's, from results/*.jsonl through kvlab.results) holds one
// point per configuration and task. Each chart plots one task: x the compression vs fp32
// on a log axis, y the KL from the full cache (log; the perplexity text) or the share of
// answers right (retrieval). Hover or focus a point: its configuration, its numbers and the
// command, commit, date and host that made them.

import { $, $$, el } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const FAMILY = { quant: "#3f5fa8", eviction: "#c07a2c", chunks: "#2f7d4f" };
const NAMES = { quant: "quantization, per-head bits, collapsed keys (quant_table)", eviction: "eviction (eviction_table)",
  chunks: "chunk summaries and token importance (chunks_table)" };
const W = 460, H = 300, PAD = { l: 52, r: 12, t: 10, b: 38 };
const KL_FLOOR = 1e-5;   // KL 0 (the full cache itself) sits on the axis

const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

function scale(lo, hi, a, b, log) {
  const f = log ? Math.log10 : (x) => x;
  return (x) => a + ((f(x) - f(lo)) / (f(hi) - f(lo))) * (b - a);
}

function describe(p) {
  const kl = p.kl === null ? "–" : `${p.kl.toPrecision(3)}` + (p.kl_min !== p.kl_max ? ` (${p.kl_min.toPrecision(2)}–${p.kl_max.toPrecision(2)})` : "");
  const score = p.task === "ppl" ? `PPL ${p.score.toFixed(3)} vs ${p.score_full.toFixed(3)} full`
    : `${Math.round(p.score * p.n)}/${p.n} right (full cache ${Math.round(p.score_full * p.n)}/${p.n})` +
      (p.crossovers ? `, ${p.crossovers} crossovers` : "");
  return `${p.label} [${p.table}] · ${p.task} at ${p.context.toLocaleString("en-US")} tokens` +
    (p.question ? `, question ${p.question}` : "") + ` · ${p.ratio_vs_fp32.toFixed(2)}× vs fp32 · KL ${kl} · ${score} · ` +
    `${p.task === "ppl" ? `${p.n} texts` : `${p.n} questions`} · policy ${JSON.stringify(p.policy)} · ` +
    `made by: ${p.command} (commit ${p.commit}, ${p.date.slice(0, 10)}, ${p.host})`;
}

function draw(fig, points) {
  const task = fig.dataset.task, byKl = fig.dataset.y === "kl";
  const pts = points.filter((p) => p.task === task && (!byKl || p.kl !== null));
  const box = $("svg", fig);
  box.setAttribute("viewBox", `0 0 ${W} ${H}`);
  box.replaceChildren();
  const xmax = Math.max(2, ...pts.map((p) => p.ratio_vs_fp32)) * 1.15;
  const x = scale(0.85, xmax, PAD.l, W - PAD.r, true);
  const ys = byKl ? pts.map((p) => Math.max(KL_FLOOR, p.kl)) : [];
  const y = byKl ? scale(KL_FLOOR, Math.max(1, ...ys) * 1.5, H - PAD.b, PAD.t, true) : scale(0, 1.05, H - PAD.b, PAD.t, false);
  // axes and grid
  const xt = [1, 2, 4, 8, 16, 32, 64, 128].filter((t) => t <= xmax);
  const yt = byKl ? [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10].filter((t) => y(t) >= PAD.t) : [0, 0.25, 0.5, 0.75, 1];
  for (const t of xt) {
    box.append(svg("line", { x1: x(t), x2: x(t), y1: PAD.t, y2: H - PAD.b, class: "grid" }));
    const l = svg("text", { x: x(t), y: H - PAD.b + 14, "text-anchor": "middle", class: "tick" }); l.textContent = `${t}×`; box.append(l);
  }
  for (const t of yt) {
    box.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y(t), y2: y(t), class: "grid" }));
    const l = svg("text", { x: PAD.l - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" });
    l.textContent = byKl ? (t === KL_FLOOR ? "≤1e-5" : t.toExponential(0)) : `${t * 100}%`;
    box.append(l);
  }
  const xl = svg("text", { x: (PAD.l + W - PAD.r) / 2, y: H - 6, "text-anchor": "middle", class: "axis" });
  xl.textContent = "compression vs fp32 (log)"; box.append(xl);
  const yl = svg("text", { x: 12, y: (PAD.t + H - PAD.b) / 2, "text-anchor": "middle", class: "axis",
    transform: `rotate(-90 12 ${(PAD.t + H - PAD.b) / 2})` });
  yl.textContent = byKl ? "KL from the full cache, nats" : "answers right"; box.append(yl);
  // the points: a hollow ring for the question read after compression
  const readout = $("[data-role=readout]", fig);
  for (const p of pts) {
    const c = svg("circle", { cx: x(p.ratio_vs_fp32), cy: y(byKl ? Math.max(KL_FLOOR, p.kl) : p.score), r: 4.5,
      fill: p.question === "after" ? "white" : FAMILY[p.table], stroke: FAMILY[p.table], "stroke-width": 1.6,
      "fill-opacity": 0.75, tabindex: 0, class: "pt", "data-table": p.table });
    const t = svg("title"); t.textContent = describe(p); c.append(t);
    const show = () => { readout.textContent = describe(p); };
    c.addEventListener("mouseenter", show);
    c.addEventListener("focus", show);
    box.append(c);
  }
  fig.dataset.points = String(pts.length);
  box.setAttribute("aria-label", `${pts.length} points: ${task}, ${byKl ? "KL" : "answers right"} against compression`);
}

async function main() {
  try {
    const res = await fetch("./results_all.json");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const doc = await res.json();
    $("#legend").replaceChildren(...Object.entries(FAMILY).map(([k, c]) =>
      el("span", { class: "key" }, el("span", { class: "swatch", style: `background:${c}` }), ` ${NAMES[k]}`)),
      el("span", { class: "key" }, el("span", { class: "swatch ring" }), " hollow: the question read after compression"));
    for (const fig of $$(".rchart")) draw(fig, doc.points);
    document.body.dataset.state = "ready";
  } catch (err) {
    const e = $("#results-error");
    e.hidden = false;
    e.textContent = `The results could not be read (results_all.json): ${err.message}`;
    document.body.dataset.state = "error";
  }
}

main();
