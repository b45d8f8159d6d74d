// KV Cache Lab: the head profile page (profile.html).
//
// Draws one profile into the page laid out by the template: heatmaps (layers × heads),
// the four observations of seed 001 as small SVG charts, the ranked candidates, the texts
// and the run. The profile is either the builder's (profile.json + observations.json,
// fetched beside this file, drawn without starting any engine) or one measured live in
// this tab through window.kvlab (boot.js: kvlab.start(), then kvlab.profile(opts)).
// <body data-profile> says what is drawn: "loading" → "ready" (precomputed) or "live";
// "error" if the precomputed files cannot be read. <body data-live> follows the button:
// "running" → "done" | "error" | "stopped". Tests wait on these, never on time.

// ---- small helpers ------------------------------------------------------------------------

import { $, $$, el } from "./dom.js";
const SVG_NS = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}, ...kids) => {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, v);
  e.append(...kids.filter((k) => k !== null && k !== undefined));
  return e;
};

/** A measurement for reading: 3 significant digits (0.838, 8.13, 0.0599), tiny ones as 6.50e-5. */
export function fmt(v) {
  if (!Number.isFinite(v)) return "—";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1000) return v.toFixed(0);
  if (a >= 0.001) return v.toPrecision(3);
  return v.toExponential(2).replace("e-", "e−");
}
const pct = (v) => `${Math.round(v * 100)}%`;
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const words = (key) => key.replace(/_/g, " ");

const body = document.body;
const params = new URLSearchParams(location.search);

// pre: profile.json; observations: observations.json; live: kvlab.profile()'s result
const state = { pre: null, observations: null, live: null, liveWall: 0, quick: false, running: false };

// ---- colour: a viridis-like sequential scale (dark = low, bright = high) --------------------

// matplotlib's viridis at ten even stops: perceptually uniform, readable in grey and by most
// colour-blind readers, and "bright" always means "more"
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e",
                 "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];
const RGB = VIRIDIS.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));

/** The colour of t ∈ [0, 1], interpolated between the stops. */
export function viridis(t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (RGB.length - 1);
  const i = Math.min(RGB.length - 2, Math.floor(x));
  const f = x - i;
  const [r, g, b] = RGB[i].map((c, k) => Math.round(c + (RGB[i + 1][k] - c) * f));
  return `rgb(${r}, ${g}, ${b})`;
}
const GRADIENT = `linear-gradient(to right, ${VIRIDIS.map((c, i) => `${c} ${(i / (VIRIDIS.length - 1)) * 100}%`).join(", ")})`;

/**
 * The map from values to [0, 1]. ``spec`` (the template's data-scale): "lo,hi" a fixed
 * domain; "log" for values spanning decades (floored at the smallest positive one);
 * "" the data's own range.
 */
function makeScale(flat, spec) {
  if (spec === "log") {
    const pos = flat.filter((v) => v > 0);
    const lo = pos.length ? Math.min(...pos) : 1e-9;
    const hi = Math.max(lo, ...pos);
    const span = Math.log(hi / lo) || 1;
    return { lo, hi, log: true, t: (v) => (v <= lo ? 0 : Math.log(v / lo) / span) };
  }
  const fixed = spec ? spec.split(",").map(Number) : null;
  const lo = fixed ? fixed[0] : Math.min(...flat);
  const hi = fixed ? fixed[1] : Math.max(...flat);
  const span = hi - lo;
  return { lo, hi, log: false, t: (v) => (span > 0 ? (v - lo) / span : 0.5) };
}

// ---- heatmaps ------------------------------------------------------------------------------

/** "layer 18, query head 7: 0.838 share" (or "layer 25: 6.50e−5 nats" for a per-layer map). */
function cellText(hm, layer, head, value, unit) {
  const where = hm.dataset.headWord ? `layer ${layer}, ${hm.dataset.headWord} ${head}` : `layer ${layer}`;
  return `${where}: ${fmt(value)} ${unit}`;
}

/** Header cells over the columns; query heads come in groups that share one KV head (GQA). */
function columnHeads(per, cols, group) {
  const head = el("div", { class: "hm-row-head", "aria-hidden": "true" }, el("span", { class: "hm-label" }));
  if (per === "layer") {
    head.append(el("span", { class: "hm-group", text: "" }));
    return [head];
  }
  const n = group || cols;
  const kvRow = el("div", { class: "hm-row-head hm-kv", "aria-hidden": "true" }, el("span", { class: "hm-label" }));
  for (let g = 0; g < cols / n; g++) {
    const ids = Array.from({ length: n }, (_, k) => el("span", { class: "hm-col", text: String(g * n + k) }));
    head.append(el("span", { class: "hm-group", style: `--n: ${n}` }, ...ids));
    kvRow.append(el("span", { class: "hm-group-label", text: `KV ${g}` }));
  }
  return group ? [kvRow, head] : [head];
}

/** Draw ``metric`` (one of profile.metrics) into the heatmap element ``hm``. */
function drawHeatmap(hm, metric) {
  const name = hm.dataset.metric;
  const per = hm.dataset.per;
  const rows = Number(hm.dataset.rows);
  const cols = Number(hm.dataset.cols);
  const group = Number(hm.dataset.group) || 0;
  if (!metric) throw new Error(`the profile has no metric "${name}"`);
  if (metric.per !== per) throw new Error(`${name} is per ${metric.per}; the page expects per ${per}`);
  const grid = per === "layer" ? metric.values.map((v) => [v]) : metric.values;  // (layers, heads)
  if (grid.length !== rows || grid.some((r) => r.length !== cols))
    throw new Error(`${name} is not ${rows} × ${cols}`);

  const scale = makeScale(grid.flat(), hm.dataset.scale);
  const kids = columnHeads(per, cols, group);
  grid.forEach((row, layer) => {
    const r = el("div", { class: "hm-row", role: "row", "data-layer": layer },
                 el("span", { class: "hm-label", role: "rowheader", text: layer % 5 === 0 ? String(layer) : "" }));
    const n = group || cols;
    for (let g = 0; g < cols / n; g++) {
      const box = el("span", { class: "hm-group", style: `--n: ${n}` });
      for (let head = g * n; head < (g + 1) * n; head++) {
        const v = row[head];
        const text = cellText(hm, layer, head, v, metric.unit);
        box.append(el("span", {
          class: "hm-cell", role: "gridcell", title: text, "aria-label": text,
          "data-layer": layer, "data-head": head, "data-value": String(v),
          style: `background: ${viridis(scale.t(v))}`,
        }));
      }
      r.append(box);
    }
    kids.push(r);
  });
  hm.replaceChildren(...kids);
  hm.dataset.unit = metric.unit;
  hm.title = metric.doc;

  const legend = $(`.hm-legend[data-for="${name}"]`);
  $(".hm-legend-bar", legend).style.background = GRADIENT;
  $(".hm-legend-min", legend).textContent = fmt(scale.lo);
  $(".hm-legend-max", legend).textContent = `${fmt(scale.hi)} ${metric.unit}${scale.log ? " (log)" : ""}`;
  legend.title = `colour scale: dark ${fmt(scale.lo)} → bright ${fmt(scale.hi)} ${metric.unit}`
    + (scale.log ? ", logarithmic" : "");
  const readout = $(`.hm-readout[data-for="${name}"]`);
  readout.textContent = "hover a cell to read it";
  readout.classList.add("idle");
}

/** Hover, and arrow keys once a map has the focus, write the cell into its readout line. */
function wireHeatmap(hm) {
  const readout = $(`.hm-readout[data-for="${hm.dataset.metric}"]`);
  const show = (cell) => {
    $$(".hm-cursor", hm).forEach((c) => c.classList.remove("hm-cursor"));
    cell.classList.add("hm-cursor");
    readout.textContent = cell.title;
    readout.classList.remove("idle");
  };
  hm.addEventListener("mouseover", (e) => {
    const cell = e.target.closest(".hm-cell");
    if (cell) show(cell);
  });
  hm.addEventListener("mouseleave", () => $$(".hm-cursor", hm).forEach((c) => c.classList.remove("hm-cursor")));
  hm.addEventListener("keydown", (e) => {
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (!(e.key in moves)) return;
    e.preventDefault();
    const at = $(".hm-cursor", hm);
    const rows = Number(hm.dataset.rows), cols = Number(hm.dataset.cols);
    let [layer, head] = at ? [Number(at.dataset.layer), Number(at.dataset.head)] : [0, 0];
    if (at) {
      layer = Math.min(rows - 1, Math.max(0, layer + moves[e.key][0]));
      head = Math.min(cols - 1, Math.max(0, head + moves[e.key][1]));
    }
    show($(`.hm-cell[data-layer="${layer}"][data-head="${head}"]`, hm));
  });
}

// ---- the four observations: small hand-drawn SVG bar charts --------------------------------

/**
 * A bar chart. ``series``: [{name, values, cls (a string or i → string), fmt}], drawn side by
 * side in each category; ``lines``: horizontal references [{v, label, cls}]. Returns the
 * <svg> and the legend's entries.
 */
function barChart({ cats, series, yMax, yFmt, yLabel, xLabel = "", xEvery = 1, lines = [], barLabels = false }) {
  const W = 460, H = 230, M = { l: 46, r: 12, t: 20, b: xLabel ? 40 : 26 };
  const iw = W - M.l - M.r, ih = H - M.t - M.b;
  const bw = iw / cats.length;
  const x0 = (i) => M.l + i * bw;
  const y = (v) => M.t + ih - (Math.min(Math.max(v, 0), yMax) / yMax) * ih;
  const out = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", "aria-hidden": "true" });

  for (let k = 0; k <= 4; k++) {
    const v = (yMax * k) / 4;
    out.append(svg("line", { x1: M.l, x2: W - M.r, y1: y(v), y2: y(v), class: k ? "grid" : "axis" }),
               svg("text", { x: M.l - 6, y: y(v) + 3.5, class: "tick", "text-anchor": "end" }, yFmt(v)));
  }
  out.append(svg("text", { x: 4, y: 11, class: "axis-label" }, yLabel));

  const inner = bw * (series.length > 1 ? 0.8 : 0.72), sw = inner / series.length;
  series.forEach((ser, si) => ser.values.forEach((v, i) => {
    const x = x0(i) + (bw - inner) / 2 + si * sw;
    const cls = typeof ser.cls === "function" ? ser.cls(i) : ser.cls;
    out.append(svg("rect", { x, y: y(v), width: Math.max(sw - 1, 0.6), height: Math.max(y(0) - y(v), 0.5), class: `bar ${cls}` },
                   svg("title", {}, `${cats[i]}${ser.name ? `, ${ser.name}` : ""}: ${ser.fmt(v)}`)));
    if (barLabels)
      out.append(svg("text", { x: x + sw / 2, y: y(v) - 4, class: "bar-label halo", "text-anchor": "middle" }, ser.fmt(v)));
  }));

  cats.forEach((c, i) => {
    if (i % xEvery) return;
    out.append(svg("text", { x: x0(i) + bw / 2, y: M.t + ih + 14, class: "tick", "text-anchor": "middle" }, c));
  });
  if (xLabel) out.append(svg("text", { x: M.l + iw / 2, y: H - 4, class: "axis-label", "text-anchor": "middle" }, xLabel));

  // labels sit at the right end of their line; one too close to a label already there moves left
  const placed = [];
  for (const l of lines) {
    const ly = y(l.v) - 4;
    const left = placed.some((p) => Math.abs(p - ly) < 12);
    if (!left) placed.push(ly);
    out.append(svg("line", { x1: M.l, x2: W - M.r, y1: y(l.v), y2: y(l.v), class: `ref ${l.cls}` }),
               svg("text", { x: left ? M.l + 4 : W - M.r - 2, y: ly, class: `ref-label halo ${l.cls}`,
                             "text-anchor": left ? "start" : "end" }, l.label));
  }
  const legend = [...series.filter((s) => s.name).map((s) => ({ kind: "bar", cls: typeof s.cls === "string" ? s.cls : "", label: s.name })),
                  ...lines.map((l) => ({ kind: "line", cls: l.cls, label: l.legend ?? l.label }))];
  return { svg: out, legend };
}

/** What observe.py measures, read off any profile (the live one has no observations.json). */
function measuredFrom(profile) {
  const m = profile.metrics, s = profile.settings, a = profile.quant_asymmetry_kl;
  const ctx = s.context + s.queries / 2;   // the mean context a query saw
  const top = (k, suffix = "") => mean(m[`heavy_${k}${suffix}`].values);
  return {
    recency: { share_last_128: mean(m.layer_recent_share.values), uniform_share: s.recent / ctx,
               mean_context: ctx, per_layer: m.layer_recent_share.values },
    kv_asymmetry: { k_only_kl: a.k_only, v_only_kl: a.v_only, bits: a.bits, group: a.group,
                    ratio: a.v_only > 0 ? a.k_only / a.v_only : null },
    heavy_hitters: { top_1pct: top("top1"), top_5pct: top("top5"), top_20pct: top("top20"),
                     without_sinks: { top_1pct: top("top1", "_no_sinks"), top_5pct: top("top5", "_no_sinks"),
                                      top_20pct: top("top20", "_no_sinks") } },
    layer_entropy: { per_layer: m.layer_entropy.values },
  };
}

/** One chart per observation id: (measured, seed, the profile's settings, seed source) → chart. */
const CHARTS = {
  recency: (m, seed, s, src) => barChart({
    cats: m.per_layer.map((_, i) => String(i)), xEvery: 5, xLabel: "layer", yMax: 1, yFmt: pct,
    yLabel: `share on the last ${s.recent} tokens`,
    series: [{ name: "this model, per layer", values: m.per_layer, cls: "s0", fmt: pct }],
    lines: [
      { v: m.share_last_128, label: `mean ${pct(m.share_last_128)}`, cls: "mean", legend: "mean over layers" },
      { v: m.uniform_share, label: `even spread ${pct(m.uniform_share)}`, cls: "base",
        legend: `attention spread evenly over ~${Math.round(m.mean_context)} tokens` },
      { v: seed.share_last_128, label: `seed ${pct(seed.share_last_128)}`, cls: "seed", legend: src },
    ],
  }),
  kv_asymmetry: (m) => barChart({
    cats: [`keys only, ${m.bits} bits`, `values only, ${m.bits} bits`],
    yMax: niceMax(Math.max(m.k_only_kl, m.v_only_kl) * 1.15), yFmt: (v) => fmt(v), yLabel: "KL from the full cache (nats)",
    series: [{ values: [m.k_only_kl, m.v_only_kl], cls: (i) => (i ? "v" : "k"), fmt: (v) => `${fmt(v)} nats` }],
    barLabels: true,
  }),
  heavy_hitters: (m, seed, s) => barChart({
    cats: ["top 1% of tokens", "top 5%", "top 20%"], yMax: 1, yFmt: pct, yLabel: "share of the accumulated attention",
    series: [
      { name: "all tokens", values: [m.top_1pct, m.top_5pct, m.top_20pct], cls: "s0", fmt: pct },
      { name: `without the first ${s.sinks} tokens (sinks)`, cls: "s1", fmt: pct,
        values: [m.without_sinks.top_1pct, m.without_sinks.top_5pct, m.without_sinks.top_20pct] },
    ],
    barLabels: true,
  }),
  layer_entropy: (m, seed, s, src) => {
    const refs = Object.entries(seed.layer_entropy_bits ?? {});
    return barChart({
      cats: m.per_layer.map((_, i) => String(i)), xEvery: 5, xLabel: "layer", yFmt: (v) => fmt(v),
      yMax: niceMax(Math.max(...m.per_layer, ...refs.map(([, v]) => v))), yLabel: "Rényi-2 entropy (bits)",
      series: [{ name: "this model, per layer", values: m.per_layer, cls: "s0", fmt: (v) => `${fmt(v)} bits` }],
      lines: refs.map(([where, v]) => ({ v, label: `seed, ${where}: ${v} bits`, cls: "seed", legend: `${src}, ${where}` })),
    });
  },
};

/** A round axis top at or above v: 1, 2, 2.5, 5 × 10^k. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((k) => k * p).find((k) => k >= v);
}

function drawObservations(observations, measured, settings, live) {
  const src = observations.seed_source;
  $("#obs-source").textContent = `beside ${src}`;
  for (const o of observations.observations) {
    const fig = $(`.obs[data-obs="${o.id}"]`);
    if (!fig || !CHARTS[o.id]) continue;
    $(".obs-title", fig).textContent = o.title;
    const { svg: chart, legend } = CHARTS[o.id](measured[o.id] ?? o.measured, o.seed, settings, src);
    const items = legend.map((l) => el("li", {}, el("span", { class: `key ${l.kind} ${l.cls}` }), l.label));
    $(".obs-chart", fig).replaceChildren(chart, items.length ? el("ul", { class: "obs-legend" }, ...items) : "");
    $(".obs-sentence", fig).textContent = o.sentence;
    const note = $(".obs-note", fig);
    note.hidden = !live;
    note.textContent = live ? "The chart shows this browser's live profile; the sentence is the builder's, from the precomputed one." : "";
  }
}

// ---- candidates, texts and the run ------------------------------------------------------------

const TOP_N = 5;

function drawCandidates(candidates) {
  $("#cand-doc").textContent = candidates.doc ?? "";
  const tables = Object.entries(candidates).filter(([, v]) => Array.isArray(v)).map(([name, list]) => {
    const cols = list.length ? Object.keys(list[0]) : [];
    return el("table", { class: "table", "data-list": name },
      el("caption", {}, words(name), el("span", { class: "muted small", text: ` top ${Math.min(TOP_N, list.length)} of ${list.length}` })),
      el("thead", {}, el("tr", {}, el("th", { scope: "col", class: "num", text: "#" }),
                                   ...cols.map((c) => el("th", { scope: "col", class: "num", text: words(c) })))),
      el("tbody", {}, ...list.slice(0, TOP_N).map((row, i) =>
        el("tr", {}, el("td", { class: "num muted", text: String(i + 1) }),
                     ...cols.map((c) => el("td", { class: "num", text: Number.isInteger(row[c]) ? String(row[c]) : fmt(row[c]) }))))));
  });
  $("#candidates").replaceChildren(...tables);
}

function drawTextsAndRun(p, live) {
  $("#texts tbody").replaceChildren(...p.texts.map((t) => el("tr", {},
    el("td", { text: t.kind }), el("td", {}, el("code", { text: t.name })),
    el("td", {}, el("code", { title: t.sha256, text: t.sha256.slice(0, 12) })),
    el("td", { class: "num", text: t.tokens_used ?? "—" }))));
  const s = p.settings;
  const rows = [
    ["measured by", live ? "this browser (Pyodide + onnxruntime-web)" : "the builder, natively"],
    ["host · store", `${p.host} · ${p.store ?? "—"}`],
    ["profiler's time", `${p.seconds} s${live && state.liveWall ? ` (${Math.round(state.liveWall)} s with start-up)` : ""}`],
    ["settings", Object.entries(s).map(([k, v]) => `${k} ${v}`).join(", ")],
    ["queries measured", String(p.queries_measured ?? "—")],
    ["digits copied right", p.retrieval_digits_copied ? `${p.retrieval_digits_copied.right} of ${p.retrieval_digits_copied.of}` : "—"],
  ];
  $("#run").replaceChildren(...rows.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v }))));
}

// ---- one view: everything drawn from one profile ----------------------------------------------

function draw(view) {
  const live = view === "live";
  const p = live ? state.live : state.pre;
  for (const hm of $$(".heatmap")) drawHeatmap(hm, p.metrics[hm.dataset.metric]);
  for (const span of $$("[data-setting]")) {
    if (span.dataset.setting in p.settings) span.textContent = String(p.settings[span.dataset.setting]);
  }
  // kvlab.profile() returns its own observations (kvlab.observe run in the page); the
  // builder's sentences are the fallback for a result without them
  const obs = live && p.observations ? p.observations : state.observations;
  const measured = live && !p.observations ? measuredFrom(p)
    : Object.fromEntries(obs.observations.map((o) => [o.id, o.measured]));
  drawObservations(obs, measured, p.settings, live && !p.observations);
  drawCandidates(p.candidates);
  drawTextsAndRun(p, live);

  const label = live
    ? `Showing: live, this browser, ${Math.round(p.seconds)} s of profiling${state.quick ? " (quick settings)" : ""}.`
    : `Showing: precomputed by the builder (${p.host} host, ${p.store ?? ""} store, ${p.seconds} s of profiling).`;
  $("#view-label").textContent = label;
  $("#view-label").dataset.view = view;
  $("#fact-view").textContent = live ? `live, this browser, ${Math.round(p.seconds)} s` : "precomputed by the builder";
  $("#fact-view").classList.remove("pending");
  for (const r of $$('input[name="view"]')) r.checked = r.value === view;
  body.dataset.profile = live ? "live" : "ready";
}

// ---- the live run: boot the engine on demand, then profile ------------------------------------

const ui = { run: $("#live-run"), stop: $("#live-stop"), status: $("#live-status"), bar: $("#live-bar"),
             error: $("#live-error") };

function progress(fraction, text) {
  ui.bar.hidden = false;
  if (fraction !== null) {
    const v = Math.round(Math.min(1, Math.max(0, fraction)) * 100);
    $(".fill", ui.bar).style.width = `${v}%`;
    ui.bar.setAttribute("aria-valuenow", String(v));
  }
  ui.status.textContent = text;
}

const MB = (n) => (n / 2 ** 20).toFixed(0);

// the engine's start-up steps overlap (Python loads while the model downloads): the bar follows
// the model's bytes, the longest step; the words follow whichever step spoke last
window.addEventListener("kvlab:progress", (e) => {
  if (!state.running) return;
  const d = e.detail;
  const bytes = d.unit === "bytes";
  progress(bytes ? d.done / d.total : null,
           `Starting the engine: ${d.label}${bytes ? ` (${MB(d.done)} of ${MB(d.total)} MB)` : ""}…`);
});
window.addEventListener("kvlab:profile-progress", (e) => {
  if (!state.running) return;
  const d = e.detail;
  progress(d.total ? d.done / d.total : 0, `Profiling: ${d.stage}, run ${d.done} of ${d.total}…`);
});

async function runLive() {
  const api = window.kvlab;
  ui.error.hidden = true;
  if (!api || typeof api.start !== "function" || typeof api.profile !== "function") {
    fail("This page's runtime (boot.js) has no kvlab.start() / kvlab.profile(): it cannot profile in this browser.");
    return;
  }
  state.running = true;
  ui.run.disabled = true;
  body.dataset.live = "running";
  const t0 = performance.now();
  let phase = "start";
  try {
    progress(0, "Starting the engine…");
    await api.start();   // boots once; later calls resolve at once
    phase = "profile";
    const opts = state.quick ? JSON.parse(ui.run.dataset.quick) : {};
    progress(0, `Profiling${state.quick ? " (quick settings)" : ""}…`);
    ui.stop.hidden = false;   // kvlab.stop() ends the profile after the current model run
    const result = await api.profile(opts);
    state.live = result;
    state.liveWall = (performance.now() - t0) / 1000;
    try {
      draw("live");
    } catch (e) {   // a result the page cannot draw: back to the builder's, and say why
      state.live = null;
      draw("precomputed");
      throw e;
    }
    $('input[name="view"][value="live"]').disabled = false;
    progress(1, `Done: ${Math.round(state.liveWall)} s in all, start-up included.`);
    body.dataset.live = "done";
  } catch (e) {
    const msg = e?.message ?? String(e);
    if (e?.kind === "stopped") {   // asked for: not an error; the precomputed view stays
      fail("");
      ui.status.textContent = `Stopped: ${msg}.`;
      body.dataset.live = "stopped";
    } else if (phase === "profile") fail(`The profile failed: ${msg}`);
    else if ($("#boot-error").hidden) fail(`The engine could not start: ${msg}`);
    else fail("");   // boot.js has already said why, in #boot-error
  } finally {
    state.running = false;
    ui.run.disabled = false;
    ui.stop.hidden = true;
  }
}

function fail(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
  ui.status.textContent = "";
  ui.bar.hidden = true;
  body.dataset.live = "error";
}

// ---- start: the precomputed profile, no engine needed -------------------------------------------

async function fetchJson(name) {
  const r = await fetch(new URL(`./${name}`, import.meta.url), { cache: "no-cache" });
  if (!r.ok) throw new Error(`${name}: HTTP ${r.status}`);
  return r.json();
}

async function main() {
  state.quick = params.get("profile") === "quick";
  if (state.quick) ui.run.textContent = "Profile in this browser (quick)";
  $$(".heatmap").forEach(wireHeatmap);
  for (const r of $$('input[name="view"]')) r.addEventListener("change", () => r.checked && draw(r.value));
  ui.run.addEventListener("click", runLive);
  ui.stop.addEventListener("click", () => window.kvlab?.stop());
  try {
    [state.pre, state.observations] = await Promise.all([fetchJson("profile.json"), fetchJson("observations.json")]);
    $('input[name="view"][value="precomputed"]').disabled = false;
    draw("precomputed");
  } catch (e) {
    console.error("kvlab: profile page", e);
    const err = $("#load-error");
    err.textContent = `The precomputed profile could not be shown: ${e?.message ?? e}. Rebuild the site (python -m builder site).`;
    err.hidden = false;
    $("#view-label").textContent = "No precomputed profile.";
    body.dataset.profile = "error";
  }
}

main();
