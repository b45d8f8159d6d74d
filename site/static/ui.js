// KV Cache Lab: the demo page's user interface — the entry that wires its panels.
//
// boot.js (the runtime) starts Python, the model and the KV store, exposes window.kvlab and
// fires kvlab:* events on window; the page only draws them and calls window.kvlab. This
// module listens to those events and hands them to the panels, one module each, sharing
// dom.js, format.js and the one state object (state.js): the start-up card and header facts
// (boot-view.js), the Prompt card (prompt-card.js), the Output card (output.js), the
// Techniques panel (techniques-panel.js), the memory meter (meter.js) and chart (chart.js),
// the cache map (cachemap.js), the outliers-and-rotation chart (keychart.js) and "Reading
// the numbers" (numbers.js); run.js follows a run's token events across meter, chart, map
// and output. Nothing here knows a technique by name: lessons, examples, presets and the
// panel's rules come from lessons.json (data, not code), read here once. What scripts,
// tests and the other panels (compare.js, chat.js) use is exported from here.

import { onProgress, showBootFailure, showNotices, showReady } from "./boot-view.js";
import { queueMap } from "./cachemap.js";
import { drawChart } from "./chart.js";
import { queueKeys, refreshKeys } from "./keychart.js";
import { zeroMeter } from "./meter.js";
import { renderNumbers } from "./numbers.js";
import { onStop, setButtons, showMessage } from "./prompt-card.js";
import { onDone, onToken, resetView } from "./run.js";
import { body, state } from "./state.js";
import { applyPolicy, composePolicy, renderTechniques } from "./techniques-panel.js";

export { cacheMapView } from "./cachemap.js";
export { fmtBytes } from "./format.js";
export { keyChartView } from "./keychart.js";
export { composePolicy } from "./techniques-panel.js";

// ---- start-up ------------------------------------------------------------------------

function onReady(ev) {
  const d = ev.detail || {};
  state.config = d.config || {};
  showReady(d);
  renderTechniques(d.techniques || window.kvlab?.info?.techniques || []);
  setButtons();
  drawChart();
  refreshKeys();
}

function onBootError(ev) {
  const { step, message } = ev.detail || {};
  if (state.busy || body.dataset.state === "ready") { // a runtime error after start-up
    showMessage(message || "The runtime reported an error.", "error");
    return;
  }
  showBootFailure(step, message);
  setButtons();
}

// ---- lessons.json --------------------------------------------------------------------

async function loadLessons() {
  try {
    const res = await fetch("./lessons.json");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    state.lessons = await res.json();
  } catch (err) {
    state.lessons = null;
    console.warn("lessons.json:", err);
  }
  renderNumbers();
  // the panel may already be up (the runtime was quicker): render it again with the
  // lessons' captions and presets, keeping what it was set to
  if (state.techniques.length) { const policy = composePolicy(); renderTechniques(state.techniques); applyPolicy(policy); }
}

// ---- wiring --------------------------------------------------------------------------

window.addEventListener("kvlab:progress", onProgress);
window.addEventListener("kvlab:ready", onReady);
window.addEventListener("kvlab:error", onBootError);
window.addEventListener("kvlab:notice", (ev) => showNotices(ev.detail?.notices));
window.addEventListener("kvlab:token", onToken);
window.addEventListener("kvlab:done", onDone);
window.addEventListener("kvlab:reset", () => { if (!state.busy) resetView(); refreshKeys(); });
// after kvlab.generate has returned (the engine is free again), whoever asked for the run
window.addEventListener("kvlab:done", () => setTimeout(refreshKeys, 0));
window.addEventListener("kvlab:busy", (ev) => { state.engineBusy = Boolean(ev.detail); setButtons(); });
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.busy) onStop();
});

zeroMeter();
setButtons();
loadLessons();
drawChart();
queueMap();
queueKeys();
// the runtime may have finished before this module ran: catch up from window.kvlab
if (body.dataset.state === "ready" && window.kvlab?.info) onReady({ detail: window.kvlab.info });
