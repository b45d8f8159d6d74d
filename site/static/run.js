// KV Cache Lab: the run the page follows — token events and results fed to the meter, the
// chart, the cache map and the output. A run starts at its first token event, whoever asked
// for it: the Generate button, or a script calling window.kvlab.generate() (workshops,
// tests) — the meter follows the store either way. Until then the previous run stays on
// screen, so a refused request (bad input) leaves the page exactly as it was. A chat turn's
// events (chat.js shows their text) carry the meter, chart and map on across turns; a
// compare run's are the compare panel's alone.

import { clearMap, onMapEvent, refreshMapFromStore } from "./cachemap.js";
import { drawChart } from "./chart.js";
import { setMeter, setSpeed, zeroMeter } from "./meter.js";
import { appendToken, clearOutput, finishOutput, setOutputStatus, startOutput } from "./output.js";
import { state } from "./state.js";
import { policyLabel } from "./techniques-panel.js";

/** A new run: the previous one becomes the chart's ghost line, the meter starts at zero. */
export function beginRun(chat = false) {
  if (state.run && state.run.x.length > 1) state.ghost = { x: state.run.x, held: state.run.held, label: state.run.label };
  const now = performance.now();
  state.run = { x: [0], held: [0], fp32: [0], fp16: [0], working: [0], ms: [], count: 0, t0: state.pending?.t0 ?? now, last: now,
    label: state.pending?.label ?? (chat ? "the chat" : "a script's run"), prompt: null, texts: [], sawMap: false, chat };
  if (!state.pending && !chat) startOutput(null, false);   // a script's run: its prompt is not known here
  state.pending = null;
  zeroMeter();
  if (!chat) setOutputStatus("generating…");
}

/** kvlab:token */
export function onToken(ev) {
  const d = ev.detail || {};
  if (d.side) return;   // a compare run's: the compare panel shows it (compare.js)
  // a chat turn's (chat.js shows its text): the meter, chart and map go on across turns
  const chat = d.turn !== undefined;
  if (chat ? !state.run?.chat || (d.turn === 0 && d.index === 0) : d.index === 0 || !state.run || state.run.done) beginRun(chat);
  const run = state.run;
  if (!chat) appendToken(d.text);
  setMeter(d);
  run.x.push(d.tokens_cached);
  run.held.push(d.cache_bytes);
  run.fp32.push(d.fp32_bytes);
  run.fp16.push(d.fp16_bytes);
  run.working.push(d.working_bytes);
  if (d.cache_map) onMapEvent(run, d);
  const now = performance.now();
  if (run.count > 0) run.ms.push(Number.isFinite(d.ms) ? d.ms : now - run.last);
  run.last = now;
  run.count += 1;
  const avg = run.ms.length ? run.ms.reduce((a, b) => a + b, 0) / run.ms.length : NaN;
  setSpeed({ msPerToken: avg, ttft: run.count === 1 ? now - run.t0 : undefined });
  drawChart();
}

/** kvlab:done (any panel's run, or a script's): its result, once. */
export function onDone(ev) {
  const r = ev.detail;
  if (r && typeof r === "object" && state.run && !state.run.done) showResult(r);
}

/** The run's result: the store's final numbers, the speeds, the whole text. */
export function showResult(r) {
  const run = state.run;
  if (!run || run.done) return;
  run.done = true;
  if (r.policy) run.label = policyLabel(r.policy);
  setMeter(r);
  setSpeed({ msPerToken: r.ms_per_token, ttft: r.ttft_ms, prefill: r.prefill_ms });
  finishOutput(r);
  if (r.tokens_cached && run.x[run.x.length - 1] !== r.tokens_cached) {
    run.x.push(r.tokens_cached); run.held.push(r.cache_bytes); run.fp32.push(r.fp32_bytes); run.fp16.push(r.fp16_bytes);
    run.working.push(r.working_bytes);
  }
  drawChart();
  if (!run.sawMap) setTimeout(() => refreshMapFromStore(r), 0);   // after kvlab.generate has returned
}

/** The cache was emptied: no run, no ghost, an empty meter, output, chart and map. */
export function resetView() {
  state.run = null;
  state.ghost = null;
  state.pending = null;
  clearMap();
  zeroMeter();
  clearOutput();
  drawChart();
}
