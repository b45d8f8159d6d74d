// KV Cache Lab: the memory chart (uPlot) — bytes against tokens in the context for the
// current run (cache held, and what fp32 and fp16 would hold, and the working memory), with
// the previous run's held line behind it for comparison. It reads state.run and state.ghost
// (run.js fills them from the token events) and redraws at most once per animation frame.

import { $, cssVar } from "./dom.js";
import { fmtBytes, fmtInt } from "./format.js";
import { state } from "./state.js";

const chart = $("#chart");
let plot = null;
let chartQueued = false;

function chartData() {
  const run = state.run || { x: [], held: [], fp32: [], fp16: [], working: [] };
  const ghost = state.ghost;
  if (!ghost || !ghost.x.length) return [run.x, run.held, run.fp32, run.fp16, run.x.map(() => null), run.working];
  // align the two runs on one x axis (tokens in the cache)
  const xs = [...new Set([...run.x, ...ghost.x])].sort((a, b) => a - b);
  const at = (xsrc, ysrc) => { const m = new Map(xsrc.map((x, i) => [x, ysrc[i]])); return xs.map((x) => (m.has(x) ? m.get(x) : null)); };
  return [xs, at(run.x, run.held), at(run.x, run.fp32), at(run.x, run.fp16), at(ghost.x, ghost.held), at(run.x, run.working)];
}

// tick steps that read well in binary units: 1, 2, 2.5, 5 × 1, 1024, 1024² …
const BYTE_INCRS = [1, 1024, 1024 ** 2, 1024 ** 3].flatMap((b) => [1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 250, 500].map((m) => m * b));

function makePlot() {
  if (typeof window.uPlot !== "function") {
    chart.textContent = "The chart library (uPlot) did not load.";
    return null;
  }
  const width = Math.max(280, chart.clientWidth || 560);
  const bytesAxis = (u, vals) => vals.map((v) => (v == null ? "" : fmtBytes(v)));
  const opts = {
    width,
    height: 240,
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
    scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(max || 0, 1024)] } },
    axes: [
      { label: "tokens in context", labelSize: 18, size: 34, stroke: cssVar("--muted"), grid: { stroke: cssVar("--track") }, ticks: { stroke: cssVar("--line") } },
      { values: bytesAxis, size: 78, incrs: BYTE_INCRS, stroke: cssVar("--muted"), grid: { stroke: cssVar("--track") }, ticks: { stroke: cssVar("--line") } },
    ],
    series: [
      { label: "tokens", value: (u, v) => (v == null ? "—" : fmtInt(v)) },
      { label: "cache held", points: { show: false }, stroke: cssVar("--accent"), width: 2.5, fill: "rgba(29,111,122,0.08)", value: (u, v) => (v == null ? "—" : fmtBytes(v)), spanGaps: true },
      { label: "fp32", points: { show: false }, stroke: cssVar("--fp32"), width: 1.5, dash: [6, 4], value: (u, v) => (v == null ? "—" : fmtBytes(v)), spanGaps: true },
      { label: "fp16", points: { show: false }, stroke: cssVar("--fp16"), width: 1.5, dash: [2, 3], value: (u, v) => (v == null ? "—" : fmtBytes(v)), spanGaps: true },
      { label: "last run", points: { show: false }, stroke: "rgba(29,111,122,0.45)", width: 1.5, dash: [1, 3], value: (u, v) => (v == null ? "—" : fmtBytes(v)), spanGaps: true, show: true },
      { label: "working memory (not cache)", points: { show: false }, stroke: cssVar("--work"), width: 1.5, dash: [8, 3, 2, 3], value: (u, v) => (v == null ? "—" : fmtBytes(v)), spanGaps: true },
    ],
  };
  return new window.uPlot(opts, chartData(), chart);
}

/** Redraw from state.run / state.ghost on the next frame (made on the first call). */
export function drawChart() {
  if (chartQueued) return;
  chartQueued = true;
  requestAnimationFrame(() => {
    chartQueued = false;
    if (!plot) plot = makePlot();
    else plot.setData(chartData());
    if (plot) {
      chart.dataset.points = String(state.run ? state.run.x.length : 0);
      const lab = plot.root.querySelectorAll(".u-legend .u-label")[4];
      if (lab) lab.textContent = state.ghost ? `last run: ${state.ghost.label}` : "last run";
    }
  });
}

new ResizeObserver(() => {
  if (plot) plot.setSize({ width: Math.max(280, chart.clientWidth), height: 240 });
}).observe(chart);
