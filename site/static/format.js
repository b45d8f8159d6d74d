// KV Cache Lab: how the demo page writes its numbers (bytes, counts, times, ratios), shared
// by its panels (meter.js, chart.js, cachemap.js, keychart.js, output.js, …) and, through
// ui.js, by compare.js and chat.js. Pure functions: nothing here reads the page.

/** Bytes in binary units, as engineers read them: 0 B, 980 B, 45.0 KiB, 2.61 MiB. */
export function fmtBytes(n) {
  if (!Number.isFinite(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  if (i === 0) return `${Math.round(v)} B`;
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[i]}`;
}
export const fmtInt = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "—");
export const fmtMs = (ms) => (!Number.isFinite(ms) ? "—" : ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`);
export const fmtRatio = (r) => (r >= 10 ? r.toFixed(1) : r.toFixed(2).replace(/0$/, ""));

export const sum = (xs) => xs.reduce((a, b) => a + b, 0);
