// KV Cache Lab: the demo page's user interface.
//
// boot.js (the runtime) starts Python, the model and the KV store, exposes window.kvlab and
// fires kvlab:* events on window; this module only draws them and calls window.kvlab.
// Nothing here knows a technique by name: the technique panel is rendered from the
// registry's description (kvlab:ready → techniques), and lessons/examples come from
// lessons.json (data, not code).

// ---- small helpers --------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "for" || k === "role") e.setAttribute(k, v === true ? "" : v);
    else e[k] = v;
  }
  for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
};

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
const fmtInt = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "—");
const fmtMs = (ms) => (!Number.isFinite(ms) ? "—" : ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`);
const fmtRatio = (r) => (r >= 10 ? r.toFixed(1) : r.toFixed(2).replace(/0$/, ""));

// ---- page state ----------------------------------------------------------------------

const body = document.body;
const N_LAYERS = Number(body.dataset.nLayers) || 30;
const state = {
  techniques: [],
  lessons: null,
  busy: false,
  bootStart: performance.now(),
  run: null,        // the current run: {x: [], held: [], fp32: [], fp16: [], ms: [], t0}
  ghost: null,      // the previous run's held line: {x: [], held: [], label}
  pending: null,    // a Generate click waiting for its first token: {label, t0}
};

const ui = {
  form: $("#gen-form"),
  prompt: $("#prompt"),
  chat: $("#chat"),
  maxNew: $("#max-new-tokens"),
  temperature: $("#temperature"),
  seed: $("#seed"),
  generate: $("#generate"),
  stop: $("#stop"),
  reset: $("#reset"),
  output: $("#output"),
  outputStatus: $("#output-status"),
  message: $("#message"),
  total: $("#meter-total"),
  fp32: $("#meter-fp32"),
  fp16: $("#meter-fp16"),
  ratio: $("#meter-ratio"),
  bars: $("#layer-bars"),
  chart: $("#chart"),
  techniques: $("#techniques"),
  policyJson: $("#policy-json"),
  boot: $("#boot"),
  bootSteps: $("#boot-steps"),
  bootError: $("#boot-error"),
  bootElapsed: $("#boot-elapsed"),
};
ui.bars.style.setProperty("--n-layers", String(N_LAYERS));

// ---- messages ------------------------------------------------------------------------

function showMessage(text, kind = "info") {
  ui.message.textContent = text;
  ui.message.classList.toggle("error", kind === "error");
  ui.message.dataset.kind = kind;
  ui.message.hidden = !text;
}
const clearMessage = () => showMessage("");

// ---- start-up panel ------------------------------------------------------------------

const STEP_ORDER = [...ui.bootSteps.querySelectorAll("li")].map((li) => li.dataset.step);

function stepItem(step) {
  let li = ui.bootSteps.querySelector(`li[data-step="${CSS.escape(step)}"]`);
  if (!li) { // a step the template does not know: show it anyway
    li = el("li", { "data-step": step, "data-status": "waiting" },
      el("span", { class: "step-label", text: step }), el("span", { class: "step-detail" }),
      el("span", { class: "bar", role: "progressbar", "aria-label": step, "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0 },
        el("span", { class: "fill" })));
    ui.bootSteps.append(li);
    STEP_ORDER.push(step);
  }
  return li;
}

function setStep(li, status, fraction, detail) {
  li.dataset.status = status;
  const pct = Math.max(0, Math.min(100, Math.round((fraction ?? 0) * 100)));
  li.querySelector(".fill").style.width = `${pct}%`;
  li.querySelector(".bar").setAttribute("aria-valuenow", String(pct));
  if (detail !== undefined) li.querySelector(".step-detail").textContent = detail;
}

function onProgress(ev) {
  const { step, label, done, total, unit } = ev.detail || {};
  if (!step) return;
  const li = stepItem(step);
  if (label) li.querySelector(".step-label").textContent = label;
  // earlier steps are finished once a later one reports (events may predate this module)
  const idx = STEP_ORDER.indexOf(step);
  STEP_ORDER.slice(0, idx).forEach((s) => {
    const prev = stepItem(s);
    if (prev.dataset.status !== "done") setStep(prev, "done", 1);
  });
  const frac = total > 0 ? done / total : done ? 1 : 0;
  let detail = "";
  if (unit === "bytes" && total > 0) {
    detail = `${(done / 1e6).toFixed(1)} / ${(total / 1e6).toFixed(1)} MB`;
    if (ev.detail.fromCache && ev.detail.fromCache >= done) detail += " · from the browser cache";
  }
  else if (unit === "bytes" && done) detail = `${(done / 1e6).toFixed(1)} MB`;
  else if (total > 1) detail = `${done} / ${total}${unit ? " " + unit : ""}`;
  if (ev.detail.note) detail = ev.detail.note;
  const finished = total > 0 ? done >= total : Boolean(done);
  setStep(li, finished ? "done" : "active", finished ? 1 : frac, detail);
  ui.bootElapsed.textContent = `${((performance.now() - state.bootStart) / 1000).toFixed(1)} s`;
}

function onBootError(ev) {
  const { step, message } = ev.detail || {};
  if (state.busy || body.dataset.state === "ready") { // a runtime error after start-up
    showMessage(message || "The runtime reported an error.", "error");
    return;
  }
  if (step) setStep(stepItem(step), "error", 1);
  ui.boot.classList.add("failed");
  $("#boot-title").textContent = "Start-up failed";
  const label = step ? stepItem(step).querySelector(".step-label").textContent || step : "";
  const text = message || "unknown error";
  ui.bootError.textContent = label && !text.startsWith(label) ? `${label}: ${text}` : text;
  ui.bootError.hidden = false;
  setButtons();
}

// ---- header facts ---------------------------------------------------------------------

function setFact(id, text, cls) {
  const dd = $(id);
  dd.textContent = text;
  dd.className = cls || "";
}

function onReady(ev) {
  const d = ev.detail || {};
  state.config = d.config || {};
  const secs = ((Number.isFinite(d.bootMs) ? d.bootMs : performance.now() - state.bootStart) / 1000).toFixed(1);
  STEP_ORDER.forEach((s) => setStep(stepItem(s), "done", 1));
  ui.boot.classList.add("done");
  $("#boot-title").textContent = `Ready in ${secs} s${d.modelFromCache ? " (model from the browser cache)" : ""} — model, engine and KV store are running in this tab.`;
  ui.bootElapsed.textContent = "";

  if (d.store === "simd") setFact("#rt-store", "WebAssembly SIMD", "good");
  else if (d.store === "scalar") setFact("#rt-store", "scalar (this browser lacks WebAssembly SIMD)", "warn");
  else setFact("#rt-store", String(d.store ?? "unknown"));
  setFact("#rt-threads", d.threads ? `${d.threads} for the model` : "1");
  setFact("#rt-coi", d.crossOriginIsolated ? "cross-origin isolated" : "not isolated (one thread)", d.crossOriginIsolated ? "good" : "warn");

  renderTechniques(d.techniques || window.kvlab?.info?.techniques || []);
  setButtons();
  drawChart();
}

// ---- technique panel (registry-driven) ------------------------------------------------

function lessonFor(name) {
  return state.lessons?.techniques?.[name] || {};
}

function paramControl(tech, p) {
  const id = `tech-${tech.name}-${p.name}`;
  const range = p.lo !== null && p.lo !== undefined && p.hi !== null && p.hi !== undefined ? ` (${p.lo} to ${p.hi})` : "";
  const caption = (lessonFor(tech.name).params?.[p.name] || p.help || "") + range;
  const common = { id, "data-param": p.name, "data-kind": p.kind, title: p.help || "" };
  let control;
  if (p.kind === "bool") {
    control = el("input", { ...common, type: "checkbox", checked: Boolean(p.default) });
  } else if (p.choices && p.choices.length) {
    control = el("select", common, ...p.choices.map((c) => el("option", { value: String(c), text: String(c), selected: c === p.default })));
  } else {
    const step = p.kind === "int" ? 1 : "any";
    control = el("input", { ...common, type: "number", value: String(p.default), step, min: p.lo ?? undefined, max: p.hi ?? undefined, inputMode: p.kind === "int" ? "numeric" : "decimal" });
  }
  const label = el("label", { for: id }, el("code", { text: p.name }), control,
    caption ? el("span", { class: "caption", text: caption }) : null);
  if (p.kind === "bool") label.style.flexDirection = "row";
  return el("div", { class: "param" }, label);
}

function renderTechniques(list) {
  state.techniques = Array.isArray(list) ? list : [];
  ui.techniques.replaceChildren();
  const examples = (state.lessons?.examples || []).filter((ex) => Object.keys(ex.policy).every((n) => state.techniques.some((t) => t.name === n)));
  if (examples.length) {
    const row = el("div", { class: "examples", role: "group", "aria-label": "Example policies" }, el("span", { class: "muted small", text: "Try: " }));
    for (const ex of examples) {
      const b = el("button", { type: "button", class: "chip", text: ex.label, title: ex.note || JSON.stringify(ex.policy) });
      b.addEventListener("click", () => applyPolicy(ex.policy));
      row.append(b);
    }
    ui.techniques.append(row);
  }
  for (const t of state.techniques) {
    const onId = `tech-${t.name}`;
    const toggle = el("input", { type: "checkbox", id: onId, "data-toggle": t.name });
    const lesson = lessonFor(t.name).lesson || (state.lessons ? state.lessons.fallback : "");
    const fs = el("fieldset", { "data-technique": t.name },
      el("legend", {}, el("label", { for: onId }, toggle, el("span", { text: t.name }), t.family ? el("span", { class: "family", text: t.family, title: state.lessons?.families?.[t.family] || "" }) : null)),
      t.summary ? el("p", { class: "tech-summary", text: t.summary }) : null,
      t.source ? el("p", { class: "tech-source", text: `Source: ${t.source}` }) : null,
      el("div", { class: "params" }, ...(t.params || []).map((p) => paramControl(t, p))),
      lesson ? el("p", { class: "tech-lesson", text: lesson }) : null);
    ui.techniques.append(fs);
  }
  if (!state.techniques.length) ui.techniques.append(el("p", { class: "muted small", text: "The registry lists no techniques: only the full cache." }));
  onTechniqueChange();
}

function onTechniqueChange() {
  for (const fs of ui.techniques.querySelectorAll("fieldset[data-technique]")) {
    const on = fs.querySelector("[data-toggle]").checked;
    fs.classList.toggle("on", on);
    for (const c of fs.querySelectorAll("[data-param]")) c.disabled = !on || state.busy;
  }
  ui.policyJson.textContent = JSON.stringify(composePolicy());
}

/** {technique: {param: value}} from the panel: only the techniques switched on. */
export function composePolicy() {
  const policy = {};
  for (const fs of ui.techniques.querySelectorAll("fieldset[data-technique]")) {
    if (!fs.querySelector("[data-toggle]").checked) continue;
    const params = {};
    for (const c of fs.querySelectorAll("[data-param]")) {
      const kind = c.dataset.kind;
      if (kind === "bool") params[c.dataset.param] = c.checked;
      else if (c.value.trim() === "") params[c.dataset.param] = null; // the engine says what is wrong
      else params[c.dataset.param] = kind === "int" || kind === "float" ? Number(c.value) : c.value;
    }
    policy[fs.dataset.technique] = params;
  }
  return policy;
}

/** Set the panel from a policy object (the examples): techniques not named are switched off. */
function applyPolicy(policy) {
  for (const fs of ui.techniques.querySelectorAll("fieldset[data-technique]")) {
    const given = policy[fs.dataset.technique];
    fs.querySelector("[data-toggle]").checked = Boolean(given);
    const tech = state.techniques.find((t) => t.name === fs.dataset.technique);
    for (const c of fs.querySelectorAll("[data-param]")) {
      const p = tech?.params?.find((q) => q.name === c.dataset.param);
      const v = given && c.dataset.param in given ? given[c.dataset.param] : p?.default;
      if (c.type === "checkbox") c.checked = Boolean(v);
      else c.value = String(v);
    }
  }
  onTechniqueChange();
}

function policyLabel(policy) {
  const names = Object.keys(policy);
  if (!names.length) return "full fp32";
  return names.map((n) => `${n}(${Object.entries(policy[n]).map(([k, v]) => `${k}=${v}`).join(", ")})`).join(" + ");
}

// ---- buttons -------------------------------------------------------------------------

function setButtons() {
  const ready = body.dataset.state === "ready" && Boolean(window.kvlab);
  ui.generate.disabled = !ready || state.busy;
  ui.stop.disabled = !ready || !state.busy;
  ui.reset.disabled = !ready || state.busy;
  ui.prompt.readOnly = state.busy;
  for (const c of [ui.chat, ui.maxNew, ui.temperature, ui.seed]) c.disabled = state.busy;
  for (const t of ui.techniques.querySelectorAll("[data-toggle], button.chip")) t.disabled = state.busy;
  body.classList.toggle("generating", state.busy);
  onTechniqueChange();
}

// ---- output --------------------------------------------------------------------------

function startOutput(prompt, chat) {
  ui.output.replaceChildren(
    prompt === null ? el("span", { class: "prompt-text", "data-role": "script", text: "(started by a script through window.kvlab)" })
      : el("span", { class: "prompt-text", "data-role": chat ? "user" : "prompt", text: prompt }),
    el("span", { class: "sep", "aria-hidden": "true" }),
    el("span", { class: "gen" }));
  ui.outputStatus.textContent = "";
}

function appendToken(text) {
  const gen = $(".gen", ui.output);
  if (!gen || !text) return;
  const old = gen.querySelector(".tok-new");
  if (old) old.classList.remove("tok-new");
  gen.append(el("span", { class: "tok-new", text }));
  const nearBottom = ui.output.scrollHeight - ui.output.scrollTop - ui.output.clientHeight < 40;
  if (nearBottom) ui.output.scrollTop = ui.output.scrollHeight;
}

function finishOutput(result) {
  const gen = $(".gen", ui.output);
  // the result's text is authoritative (a token may end mid-character; the whole decodes right)
  if (gen && typeof result.text === "string") gen.textContent = result.text;
  const why = { eos: "the model ended its answer", length: "reached max new tokens", stopped: "stopped" }[result.stop_reason] || result.stop_reason;
  ui.outputStatus.textContent = `${fmtInt(result.ids?.length ?? 0)} tokens · ${why}`;
}

function clearOutput() {
  ui.output.replaceChildren(el("span", { class: "placeholder", text: "The generated text streams here, token by token." }));
  ui.outputStatus.textContent = "";
}

// ---- the meter -----------------------------------------------------------------------

const barEls = [...ui.bars.querySelectorAll("[data-layer]")];

function setMeter(m) {
  const held = m.cache_bytes || 0;
  const fp32 = m.fp32_bytes || 0;
  const fp16 = m.fp16_bytes || 0;
  ui.total.dataset.bytes = String(held);
  ui.total.textContent = fmtBytes(held);
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
  $("#stat-tokens").textContent = fmtInt(m.tokens_cached || 0);
  $("#stat-bpt").textContent = m.tokens_cached ? fmtBytes(held / m.tokens_cached) : "—";

  const layers = m.layer_bytes || [];
  const partFp32 = fp32 / N_LAYERS / 2; // one layer's K (or V) in fp32 for the same tokens
  barEls.forEach((b, i) => {
    const [k, v] = layers[i] || [0, 0];
    b.dataset.kBytes = String(k);
    b.dataset.vBytes = String(v);
    const kh = partFp32 > 0 ? Math.min(1, k / partFp32) : 0;
    const vh = partFp32 > 0 ? Math.min(1, v / partFp32) : 0;
    b.children[0].firstElementChild.style.height = `${(kh * 100).toFixed(1)}%`;
    b.children[1].firstElementChild.style.height = `${(vh * 100).toFixed(1)}%`;
    b.title = `layer ${i}: K ${fmtBytes(k)} · V ${fmtBytes(v)}${partFp32 ? ` (fp32: ${fmtBytes(partFp32)} each)` : ""}`;
  });
}

function setSpeed({ msPerToken, ttft, prefill }) {
  $("#stat-mspt").textContent = fmtMs(msPerToken);
  $("#stat-tps").textContent = Number.isFinite(msPerToken) && msPerToken > 0 ? (1000 / msPerToken).toFixed(1) : "—";
  if (ttft !== undefined) $("#stat-ttft").textContent = fmtMs(ttft);
  if (prefill !== undefined) $("#stat-prefill").textContent = fmtMs(prefill);
}

function zeroMeter() {
  setMeter({ cache_bytes: 0, fp32_bytes: 0, fp16_bytes: 0, tokens_cached: 0, layer_bytes: [] });
  for (const id of ["#stat-tps", "#stat-mspt", "#stat-ttft", "#stat-prefill"]) $(id).textContent = "—";
}

// ---- the chart (uPlot) ---------------------------------------------------------------

let plot = null;
let chartQueued = false;

function chartData() {
  const run = state.run || { x: [], held: [], fp32: [], fp16: [] };
  const ghost = state.ghost;
  if (!ghost || !ghost.x.length) return [run.x, run.held, run.fp32, run.fp16, run.x.map(() => null)];
  // align the two runs on one x axis (tokens in the cache)
  const xs = [...new Set([...run.x, ...ghost.x])].sort((a, b) => a - b);
  const at = (xsrc, ysrc) => { const m = new Map(xsrc.map((x, i) => [x, ysrc[i]])); return xs.map((x) => (m.has(x) ? m.get(x) : null)); };
  return [xs, at(run.x, run.held), at(run.x, run.fp32), at(run.x, run.fp16), at(ghost.x, ghost.held)];
}

// tick steps that read well in binary units: 1, 2, 2.5, 5 × 1, 1024, 1024² …
const BYTE_INCRS = [1, 1024, 1024 ** 2, 1024 ** 3].flatMap((b) => [1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 250, 500].map((m) => m * b));

function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

function makePlot() {
  if (typeof window.uPlot !== "function") {
    ui.chart.textContent = "The chart library (uPlot) did not load.";
    return null;
  }
  const width = Math.max(280, ui.chart.clientWidth || 560);
  const bytesAxis = (u, vals) => vals.map((v) => (v == null ? "" : fmtBytes(v)));
  const opts = {
    width,
    height: 240,
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
    scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(max || 0, 1024)] } },
    axes: [
      { label: "tokens in the cache", labelSize: 18, size: 34, stroke: cssVar("--muted"), grid: { stroke: cssVar("--track") }, ticks: { stroke: cssVar("--line") } },
      { values: bytesAxis, size: 78, incrs: BYTE_INCRS, stroke: cssVar("--muted"), grid: { stroke: cssVar("--track") }, ticks: { stroke: cssVar("--line") } },
    ],
    series: [
      { label: "tokens", value: (u, v) => (v == null ? "—" : fmtInt(v)) },
      { label: "held", points: { show: false }, stroke: cssVar("--accent"), width: 2.5, fill: "rgba(29,111,122,0.08)", value: (u, v) => (v == null ? "—" : fmtBytes(v)), spanGaps: true },
      { label: "fp32", points: { show: false }, stroke: cssVar("--fp32"), width: 1.5, dash: [6, 4], value: (u, v) => (v == null ? "—" : fmtBytes(v)), spanGaps: true },
      { label: "fp16", points: { show: false }, stroke: cssVar("--fp16"), width: 1.5, dash: [2, 3], value: (u, v) => (v == null ? "—" : fmtBytes(v)), spanGaps: true },
      { label: "last run", points: { show: false }, stroke: "rgba(29,111,122,0.45)", width: 1.5, dash: [1, 3], value: (u, v) => (v == null ? "—" : fmtBytes(v)), spanGaps: true, show: true },
    ],
  };
  return new window.uPlot(opts, chartData(), ui.chart);
}

function drawChart() {
  if (chartQueued) return;
  chartQueued = true;
  requestAnimationFrame(() => {
    chartQueued = false;
    if (!plot) plot = makePlot();
    else plot.setData(chartData());
    if (plot) {
      ui.chart.dataset.points = String(state.run ? state.run.x.length : 0);
      const lab = plot.root.querySelectorAll(".u-legend .u-label")[4];
      if (lab) lab.textContent = state.ghost ? `last run: ${state.ghost.label}` : "last run";
    }
  });
}

new ResizeObserver(() => {
  if (plot) plot.setSize({ width: Math.max(280, ui.chart.clientWidth), height: 240 });
}).observe(ui.chart);

// ---- generate / stop / reset ---------------------------------------------------------
//
// A run starts at its first token event, whoever asked for it: the Generate button, or a
// script calling window.kvlab.generate() (workshops, tests) — the meter follows the store
// either way. Until then the previous run stays on screen, so a refused request (bad input)
// leaves the page exactly as it was.

function beginRun() {
  if (state.run && state.run.x.length > 1) state.ghost = { x: state.run.x, held: state.run.held, label: state.run.label };
  const now = performance.now();
  state.run = { x: [0], held: [0], fp32: [0], fp16: [0], ms: [], count: 0, t0: state.pending?.t0 ?? now, last: now,
    label: state.pending?.label ?? "a script's run" };
  if (!state.pending) startOutput(null, false);   // a script's run: its prompt is not known here
  state.pending = null;
  zeroMeter();
  ui.outputStatus.textContent = "generating…";
}

function onToken(ev) {
  const d = ev.detail || {};
  if (d.index === 0 || !state.run || state.run.done) beginRun();
  const run = state.run;
  appendToken(d.text);
  setMeter(d);
  run.x.push(d.tokens_cached);
  run.held.push(d.cache_bytes);
  run.fp32.push(d.fp32_bytes);
  run.fp16.push(d.fp16_bytes);
  const now = performance.now();
  if (run.count > 0) run.ms.push(Number.isFinite(d.ms) ? d.ms : now - run.last);
  run.last = now;
  run.count += 1;
  const avg = run.ms.length ? run.ms.reduce((a, b) => a + b, 0) / run.ms.length : NaN;
  setSpeed({ msPerToken: avg, ttft: run.count === 1 ? now - run.t0 : undefined });
  drawChart();
}

function onDone(ev) {
  const r = ev.detail;
  if (r && typeof r === "object" && state.run && !state.run.done) showResult(r);
}

function showResult(r) {
  const run = state.run;
  if (!run || run.done) return;
  run.done = true;
  if (r.policy) run.label = policyLabel(r.policy);
  setMeter(r);
  setSpeed({ msPerToken: r.ms_per_token, ttft: r.ttft_ms, prefill: r.prefill_ms });
  finishOutput(r);
  if (r.tokens_cached && run.x[run.x.length - 1] !== r.tokens_cached) {
    run.x.push(r.tokens_cached); run.held.push(r.cache_bytes); run.fp32.push(r.fp32_bytes); run.fp16.push(r.fp16_bytes);
  }
  drawChart();
}

async function onGenerate(ev) {
  ev?.preventDefault();
  if (state.busy || !window.kvlab || body.dataset.state !== "ready") return;
  clearMessage();
  const prompt = ui.prompt.value;
  const chat = ui.chat.checked;
  const args = {
    prompt,
    chat,
    // an empty or invalid field is sent as typed: the engine says what is wrong with it
    maxNewTokens: ui.maxNew.value.trim() === "" ? ui.maxNew.value : Number(ui.maxNew.value),
    policy: composePolicy(),
    temperature: Number(ui.temperature.value || 0),
    seed: Number(ui.seed.value || 0),
  };
  const before = { output: [...ui.output.childNodes], status: ui.outputStatus.textContent };
  state.pending = { label: policyLabel(args.policy), t0: performance.now() };
  state.busy = true;
  setButtons();
  startOutput(prompt, chat);
  ui.outputStatus.textContent = "reading the prompt…";
  try {
    const result = await window.kvlab.generate(args);
    if (state.pending) beginRun();   // no token event came (e.g. zero new tokens)
    showResult(result);
    if (result.stop_reason === "stopped") showMessage(`Stopped after ${fmtInt(result.ids?.length ?? 0)} tokens; the cache still holds them.`);
  } catch (err) {
    showMessage((err && err.message) || String(err), "error");
    if (state.pending) {             // refused before any token: put the view back
      ui.output.replaceChildren(...before.output);
      ui.outputStatus.textContent = before.status;
    } else {
      if (state.run) state.run.done = true;
      ui.outputStatus.textContent = "interrupted by an error";
    }
  } finally {
    state.pending = null;
    state.busy = false;
    setButtons();
  }
}

function onStop() {
  if (!state.busy) return;
  ui.stop.disabled = true;
  window.kvlab?.stop();
}

async function onReset() {
  if (state.busy || !window.kvlab) return;
  ui.reset.disabled = true;
  try {
    await window.kvlab.reset();
    resetView();
    showMessage("Reset: the cache is empty.");
  } catch (err) {
    showMessage((err && err.message) || String(err), "error");
  } finally {
    setButtons();
  }
}

function resetView() {
  state.run = null;
  state.ghost = null;
  state.pending = null;
  zeroMeter();
  clearOutput();
  drawChart();
}

// ---- lessons -------------------------------------------------------------------------

function renderLessons() {
  const list = $("#lessons");
  list.replaceChildren();
  for (const n of state.lessons?.numbers || []) {
    list.append(el("div", {}, el("dt", { text: n.term }), el("dd", { text: n.text })));
    const target = document.getElementById(n.id);
    if (target && !target.title) target.title = n.text;
  }
}

async function loadLessons() {
  try {
    const res = await fetch("./lessons.json");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    state.lessons = await res.json();
  } catch (err) {
    state.lessons = null;
    console.warn("lessons.json:", err);
  }
  renderLessons();
  if (state.techniques.length) { const policy = composePolicy(); renderTechniques(state.techniques); applyPolicy(policy); }
}

// ---- wiring --------------------------------------------------------------------------

window.addEventListener("kvlab:progress", onProgress);
window.addEventListener("kvlab:ready", onReady);
window.addEventListener("kvlab:error", onBootError);
window.addEventListener("kvlab:token", onToken);
window.addEventListener("kvlab:done", onDone);
window.addEventListener("kvlab:reset", () => { if (!state.busy) resetView(); });

ui.form.addEventListener("submit", onGenerate);
ui.techniques.addEventListener("change", onTechniqueChange);
ui.techniques.addEventListener("input", onTechniqueChange);
ui.stop.addEventListener("click", onStop);
ui.reset.addEventListener("click", onReset);
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); onGenerate(); }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.busy) onStop();
});

zeroMeter();
setButtons();
loadLessons();
drawChart();
// the runtime may have finished before this module ran: catch up from window.kvlab
if (body.dataset.state === "ready" && window.kvlab?.info) onReady({ detail: window.kvlab.info });
