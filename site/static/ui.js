// KV Cache Lab: the demo page's user interface.
//
// boot.js (the runtime) starts Python, the model and the KV store, exposes window.kvlab and
// fires kvlab:* events on window; this module only draws them and calls window.kvlab.
// Nothing here knows a technique by name: the technique panel is rendered from the
// registry's description (kvlab:ready → techniques), and lessons, examples, presets and the
// panel's rules (one eviction technique at a time; ratio OR budget) come from lessons.json
// (data, not code). The cache map is drawn from each token event's `cache_map` (the page
// generates with cacheMap: true), on a <canvas>, at most once per animation frame. The
// "Outliers and rotation" chart reads one key from the store between runs
// (kvlab.keyChannels) and draws its channels before and after the rotation.

// ---- small helpers --------------------------------------------------------------------

import { $, download, el } from "./dom.js";
import { BITS, SHADES, hexRgb, paintKeepMap } from "./keepmap.js";

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
const HEAD_DIM = Number(body.dataset.headDim) || 64;
const state = {
  techniques: [],
  lessons: null,
  busy: false,
  bootStart: performance.now(),
  run: null,        // the current run: {x: [], held: [], fp32: [], fp16: [], ms: [], t0}
  ghost: null,      // the previous run's held line: {x: [], held: [], label}
  pending: null,    // a Generate click waiting for its first token: {label, t0}
  map: null,        // the newest cache map: {index, tokens, kv_heads, layers, kept, prompt, texts}
  drawn: null,      // the map the canvas shows (the newest, once a frame has drawn it)
  draws: 0,
  preset: null,     // the preset last applied (its "look" sentence shows while the panel matches it)
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
  index: $("#meter-index"),
  working: $("#meter-working"),
  savings: $("#meter-savings"),
  fp32: $("#meter-fp32"),
  fp16: $("#meter-fp16"),
  ratio: $("#meter-ratio"),
  bars: $("#layer-bars"),
  chart: $("#chart"),
  techniques: $("#techniques"),
  presets: $("#presets"),
  longText: $("#long-text"),
  map: $("#cachemap"),
  mapFrame: $("#map-frame"),
  mapTip: $("#map-tip"),
  mapEmpty: $("#map-empty"),
  mapSummary: $("#map-summary"),
  mapBoundary: $("#map-boundary"),
  mapEnd: $("#map-end"),
  mapLook: $("#map-look"),
  keys: $("#keychart"),
  keysLayer: $("#keys-layer"),
  keysHead: $("#keys-head"),
  keysEmpty: $("#keys-empty"),
  keysCaption: $("#keys-caption"),
  keysLesson: $("#keys-lesson"),
  policyJson: $("#policy-json"),
  boot: $("#boot"),
  bootSteps: $("#boot-steps"),
  bootError: $("#boot-error"),
  bootElapsed: $("#boot-elapsed"),
};
ui.bars.style.setProperty("--n-layers", String(N_LAYERS));
$("#head-bits").style.setProperty("--n-layers", String(N_LAYERS));

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

/** One line per feature the browser or address withholds (boot.js's notices). */
function showNotices(lines) {
  const ul = $("#boot-notes");
  if (!ul || !lines?.length) return;
  ul.replaceChildren(...lines.map((text) => el("li", { text })));
  ul.hidden = false;
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
  showNotices(d.notices);
  setFact("#rt-coi", d.crossOriginIsolated ? "cross-origin isolated" : "not isolated (one thread)", d.crossOriginIsolated ? "good" : "warn");

  renderTechniques(d.techniques || window.kvlab?.info?.techniques || []);
  setButtons();
  drawChart();
  refreshKeys();
}

// ---- technique panel (registry-driven) ------------------------------------------------

function lessonFor(name) {
  return state.lessons?.techniques?.[name] || {};
}

const isSet = (v) => v !== null && v !== undefined;
const panelRules = () => state.lessons?.panel || {};

/** The lessons' "give exactly one of these parameters" group holding `name`, if any. */
function chooseOne(tech, name) {
  return (panelRules().choose_one || []).find((g) => (!g.family || g.family === tech.family)
    && g.params.includes(name) && g.params.every((n) => (tech.params || []).some((q) => q.name === n)));
}

/** A value as its field shows it: a list of heads as JSON, anything else as its text. */
const asField = (p, v) => (p?.kind === "heads" && typeof v !== "string" ? JSON.stringify(v) : String(v));

/** A field's text as the policy sends it: a list of heads parsed from JSON (sent as typed
 *  when it does not parse, so the engine's message names the parameter). */
function fromField(kind, text) {
  if (kind === "int" || kind === "float") return Number(text);
  if (kind === "heads") { try { return JSON.parse(text); } catch { return text; } }
  return text;
}

/** What an optional parameter's field starts with: the lessons' suggestion, else its lower bound. */
function initialValue(tech, p) {
  const v = chooseOne(tech, p.name)?.initial?.[p.name];
  return isSet(v) ? v : isSet(p.default) ? p.default : isSet(p.lo) ? p.lo : "";
}

function paramControl(tech, p) {
  const id = `tech-${tech.name}-${p.name}`;
  const range = isSet(p.lo) && isSet(p.hi) ? ` (${p.lo} to ${p.hi})` : isSet(p.lo) ? ` (${p.lo} or more)` : "";
  const caption = (lessonFor(tech.name).params?.[p.name] || p.help || "") + range;
  // optional (default null): sent only while its "use" control is on; a choose-one group
  // makes those radios, so the panel's policy gives exactly one of them (ratio OR budget)
  const optional = !isSet(p.default);
  const common = { id, "data-param": p.name, "data-kind": p.kind, "data-optional": optional, title: p.help || "" };
  let control;
  if (p.kind === "bool") {
    control = el("input", { ...common, type: "checkbox", checked: Boolean(p.default) });
  } else if (p.choices && p.choices.length) {   // int choices (bits) and str choices (a shape) alike
    control = el("select", common, ...p.choices.map((c) => el("option", { value: String(c), text: String(c), selected: c === p.default })));
  } else if (p.kind === "str" || p.kind === "heads") {
    control = el("input", { ...common, type: "text", value: asField(p, optional ? initialValue(tech, p) : p.default) });
  } else {
    const step = p.kind === "int" ? 1 : "any";
    control = el("input", { ...common, type: "number", value: String(optional ? initialValue(tech, p) : p.default), step,
      min: p.lo ?? undefined, max: p.hi ?? undefined, inputMode: p.kind === "int" ? "numeric" : "decimal" });
  }
  const capEl = caption ? el("span", { class: "caption", text: caption }) : null;
  if (optional) {
    const group = chooseOne(tech, p.name);
    const use = el("input", {
      type: group ? "radio" : "checkbox", id: `${id}-use`, "data-use": p.name,
      name: group ? `tech-${tech.name}-${group.params.join("-")}` : undefined,
      checked: group ? group.params[0] === p.name : false,
    });
    control.setAttribute("aria-label", `${tech.name} ${p.name}`);
    return el("div", { class: "param optional" },
      el("label", { for: `${id}-use`, class: "use", title: group ? "give this one" : "give a value" }, use, el("code", { text: p.name })),
      control, capEl);
  }
  const label = el("label", { for: id }, el("code", { text: p.name }), control, capEl);
  if (p.kind === "bool") label.style.flexDirection = "row";
  return el("div", { class: "param" }, label);
}

function renderTechniques(list) {
  state.techniques = Array.isArray(list) ? list : [];
  ui.techniques.replaceChildren();
  const known = (ex) => Object.keys(ex.policy).every((n) => state.techniques.some((t) => t.name === n));
  const examples = (state.lessons?.examples || []).filter(known);
  if (examples.length) {
    const row = el("div", { class: "examples", role: "group", "aria-label": "Example policies" }, el("span", { class: "muted small", text: "Try: " }));
    for (const ex of examples) {
      const b = el("button", { type: "button", class: "chip", text: ex.label, title: ex.note || JSON.stringify(ex.policy) });
      b.addEventListener("click", () => { state.preset = null; applyPolicy(ex.policy); });
      row.append(b);
    }
    ui.techniques.append(row);
  }
  renderPresets(known);
  for (const t of state.techniques) {
    const onId = `tech-${t.name}`;
    const toggle = el("input", { type: "checkbox", id: onId, "data-toggle": t.name, "data-family": t.family || "" });
    const lesson = lessonFor(t.name).lesson || (state.lessons ? state.lessons.fallback : "");
    const groups = [...new Set((t.params || []).map((p) => chooseOne(t, p.name)).filter(Boolean))];
    const fs = el("fieldset", { "data-technique": t.name, "data-family": t.family || "" },
      el("legend", {}, el("label", { for: onId }, toggle, el("span", { text: t.name }), t.family ? el("span", { class: "family", text: t.family, title: state.lessons?.families?.[t.family] || "" }) : null)),
      t.summary ? el("p", { class: "tech-summary", text: t.summary }) : null,
      t.source ? el("p", { class: "tech-source", text: `Source: ${t.source}` }) : null,
      ...groups.map((g) => el("p", { class: "choose-one", text: g.note || `Give exactly one of ${g.params.join(", ")}.` })),
      el("div", { class: "params" }, ...(t.params || []).map((p) => paramControl(t, p))),
      lesson ? el("p", { class: "tech-lesson", text: lesson }) : null);
    ui.techniques.append(fs);
  }
  if (!state.techniques.length) ui.techniques.append(el("p", { class: "muted small", text: "The registry lists no techniques: only the full cache." }));
  onTechniqueChange();
}

const useOf = (fs, c) => fs.querySelector(`[data-use="${CSS.escape(c.dataset.param)}"]`);

function onTechniqueChange() {
  for (const fs of ui.techniques.querySelectorAll("fieldset[data-technique]")) {
    const on = fs.querySelector("[data-toggle]").checked;
    fs.classList.toggle("on", on);
    for (const u of fs.querySelectorAll("[data-use]")) u.disabled = !on || state.busy;
    for (const c of fs.querySelectorAll("[data-param]")) {
      const use = "optional" in c.dataset ? useOf(fs, c) : null;
      c.disabled = !on || state.busy || (use !== null && !use.checked);
    }
  }
  const policy = composePolicy();
  ui.policyJson.textContent = JSON.stringify(policy);
  checkPolicy(policy);
  showLook(state.preset && policyMatches(state.preset.policy, policy) ? state.preset : null);
}

/** Say at once whether the panel's techniques compose (the engine's own check, nothing
 *  run): a clear message where two cannot combine, before Generate is pressed. */
function checkPolicy(policy) {
  const box = $("#policy-check");
  if (!box || !window.kvlab?.checkPolicy || body.dataset.state !== "ready") return;
  const on = Object.keys(policy);
  window.kvlab.checkPolicy(policy).then(() => {
    box.className = "policy-check small ok";
    box.textContent = on.length > 1 ? `✓ these compose: ${on.join(" × ")}; the meter shows each factor of the saving`
      : on.length ? `✓ ${on[0]}` : "the full fp32 cache";
  }).catch((err) => {
    box.className = "policy-check small error";
    box.textContent = err.message;
  });
}

/** Switching on a technique of an exclusive family (eviction: one at a time) switches the
 *  others of that family off, so the panel never composes a policy the engine refuses. */
function onPanelChange(ev) {
  const t = ev.target;
  if (t?.matches?.("[data-toggle]") && t.checked && (panelRules().exclusive || []).includes(t.dataset.family)) {
    for (const other of ui.techniques.querySelectorAll(`[data-toggle][data-family="${CSS.escape(t.dataset.family)}"]`))
      if (other !== t) other.checked = false;
  }
  onTechniqueChange();
}

/** {technique: {param: value}} from the panel: only the techniques switched on, and of
 *  their optional parameters only the ones given (ratio OR budget). */
export function composePolicy() {
  const policy = {};
  for (const fs of ui.techniques.querySelectorAll("fieldset[data-technique]")) {
    if (!fs.querySelector("[data-toggle]").checked) continue;
    const params = {};
    for (const c of fs.querySelectorAll("[data-param]")) {
      const kind = c.dataset.kind;
      const optional = "optional" in c.dataset;
      if (optional && !useOf(fs, c)?.checked) continue;   // not given: the engine's null
      if (kind === "bool") params[c.dataset.param] = c.checked;
      // an empty field: the engine says what is wrong (a given optional one goes as typed,
      // "", so the message names it instead of "neither")
      else if (c.value.trim() === "") params[c.dataset.param] = optional ? c.value : null;
      else params[c.dataset.param] = fromField(kind, c.value);
    }
    policy[fs.dataset.technique] = params;
  }
  return policy;
}

/** Set the panel from a policy object (examples, presets): techniques not named are
 *  switched off, parameters not named take their defaults (optional ones: not given; of a
 *  choose-one group none of which is named, the first). */
function applyPolicy(policy) {
  for (const fs of ui.techniques.querySelectorAll("fieldset[data-technique]")) {
    const given = policy[fs.dataset.technique];
    fs.querySelector("[data-toggle]").checked = Boolean(given);
    const tech = state.techniques.find((t) => t.name === fs.dataset.technique);
    for (const c of fs.querySelectorAll("[data-param]")) {
      const p = tech?.params?.find((q) => q.name === c.dataset.param);
      const has = Boolean(given) && isSet(given[c.dataset.param]);
      const use = "optional" in c.dataset ? useOf(fs, c) : null;
      if (use) {
        const group = chooseOne(tech, c.dataset.param);
        const noneGiven = !group?.params.some((n) => given && isSet(given[n]));
        use.checked = has || (Boolean(group) && noneGiven && group.params[0] === c.dataset.param);
        c.value = asField(p, has ? given[c.dataset.param] : initialValue(tech, p));
        continue;
      }
      const v = has ? given[c.dataset.param] : p?.default;
      if (c.type === "checkbox") c.checked = Boolean(v);
      else c.value = asField(p, v);
    }
  }
  onTechniqueChange();
}

/** Does the panel's policy say what a preset says (the same techniques, its values)? */
function policyMatches(preset, policy) {
  const names = Object.keys(preset);
  return names.length === Object.keys(policy).length && names.every((n) => policy[n]
    && Object.entries(preset[n]).every(([k, v]) => JSON.stringify(policy[n][k]) === JSON.stringify(v)));
}

/** The preset's sentence on what to look for, under the cache map (null: hide it). */
function showLook(preset) {
  ui.mapLook.hidden = !preset;
  ui.mapLook.replaceChildren(...(preset ? [el("strong", { text: `Look for (${preset.label}): ` }), preset.look] : []));
}

/** The eviction presets (lessons.json): a chip each; applying one shows what to look for. */
function renderPresets(known) {
  const presets = (state.lessons?.presets || []).filter(known);
  ui.presets.replaceChildren();
  if (!presets.length) return;
  const row = el("div", { class: "examples", role: "group", "aria-label": "Eviction presets" },
    el("span", { class: "muted small", text: "Presets (they need a long prompt: try Long text): " }));
  for (const pr of presets) {
    const b = el("button", { type: "button", class: "chip preset", text: pr.label, title: pr.look, "data-preset": pr.label });
    b.addEventListener("click", () => { state.preset = pr; applyPolicy(pr.policy); });
    row.append(b);
  }
  ui.presets.append(row);
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
  // engineBusy: a run of another panel (compare, chat, a lesson): Stop ends it too
  ui.generate.disabled = ui.generate.disabled || state.engineBusy;
  ui.stop.disabled = !ready || !(state.busy || state.engineBusy);
  ui.reset.disabled = !ready || state.busy || state.engineBusy;
  ui.prompt.readOnly = state.busy;
  for (const c of [ui.chat, ui.maxNew, ui.temperature, ui.seed]) c.disabled = state.busy;
  for (const t of document.querySelectorAll("#techniques [data-toggle], #techniques button.chip, #presets button.chip")) t.disabled = state.busy;
  ui.longText.disabled = !ready || state.busy;
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
  state.lastResult = result;
  $("#download-run").disabled = false;
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

const sum = (xs) => xs.reduce((a, b) => a + b, 0);

function setBytes(node, n) {
  node.dataset.bytes = String(n);
  node.textContent = fmtBytes(n);
}

/** The meter from a token event or a result: the cache held (rows + index) and, apart, the
 *  working memory (fp32 staging + step buffers), both as the store reports them. */
function setMeter(m) {
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

function setSpeed({ msPerToken, ttft, prefill }) {
  $("#stat-mspt").textContent = fmtMs(msPerToken);
  $("#stat-tps").textContent = Number.isFinite(msPerToken) && msPerToken > 0 ? (1000 / msPerToken).toFixed(1) : "—";
  if (ttft !== undefined) $("#stat-ttft").textContent = fmtMs(ttft);
  if (prefill !== undefined) $("#stat-prefill").textContent = fmtMs(prefill);
}

function zeroMeter() {
  setMeter({ cache_bytes: 0, index_bytes: 0, working_bytes: 0, fp32_bytes: 0, fp16_bytes: 0, tokens_cached: 0, layer_bytes: [], kept: [] });
  for (const id of ["#stat-tps", "#stat-mspt", "#stat-ttft", "#stat-prefill"]) $(id).textContent = "—";
}

// ---- the chart (uPlot) ---------------------------------------------------------------

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

// ---- the cache map (a canvas) ----------------------------------------------------------
//
// A row per layer, a column per position (the prompt, then the generated tokens); a cell's
// shade is how many of the layer's KV heads keep the entry: the set bits of its map
// character (the bit mask '0'..'7' the store's kv_keep_map writes). Drawn in device pixels:
// with more positions than pixels a column shows the mean over its positions (a thin kept
// band still shows), with fewer a position spans several columns. At most once a frame.

const MAP_ROW = 5, MAP_GAP = 1;   // CSS px: a layer's row, the gap between rows
const shadeIndex = (k, heads) => Math.round((k / heads) * 255);
const shadeRgb = (i) => [SHADES[i] & 255, (SHADES[i] >> 8) & 255, (SHADES[i] >> 16) & 255];
let mapQueued = false;
let mapGeom = { rowH: MAP_ROW, gap: MAP_GAP, dpr: 1 };
let mapCursor = null;   // the cell the keyboard points at: {layer, pos}

function queueMap() {
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

/** A run that did not ask for the map (a script's): read it from the store once it ends. */
async function refreshMapFromStore(result) {
  try {
    const cm = await window.kvlab.cachemap({ positions: false });
    state.map = { ...cm, index: null, prompt: result?.prompt_ids?.length ?? null, texts: undefined };
    queueMap();
  } catch { /* busy again (the next run started): its end refreshes it */ }
}

for (const sw of document.querySelectorAll("#map-legend .swatch[data-heads]")) {
  const heads = Number(body.dataset.nKvHeads) || 3;
  sw.style.background = `rgb(${shadeRgb(shadeIndex(Number(sw.dataset.heads), heads)).join(",")})`;
}
new ResizeObserver(() => queueMap()).observe(ui.map);

// ---- outliers and rotation: one key's channels (a canvas) ------------------------------
//
// The newest key one layer and KV head keep, as the model reads it, read from the store
// between runs (kvlab.keyChannels): its channels as bars around zero, and under them the
// same key after the random-sign Walsh-Hadamard rotation. Both panels share one y scale
// and one pair of ±RMS lines (the rotation keeps the norm, so the RMS is the same): the
// outliers of the first panel stand far outside the lines, the rotated key barely does.

const KEYS_H = 200, KEYS_GAP = 10, KEYS_LABEL = 15;   // CSS px: the canvas, between its panels, a label
const NOTHING_CACHED = "nothing cached yet";
const keys = { data: null, error: null, seq: 0, draws: 0, queued: false, geom: null };

/** A field's value as a number, or as typed when it is not one: the engine says what is wrong. */
const fieldValue = (input) => (input.value.trim() !== "" && Number.isFinite(Number(input.value)) ? Number(input.value) : input.value);

/** Read the chosen key from the store (a newer read wins), then draw it. */
async function refreshKeys() {
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

function queueKeys() {
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

new ResizeObserver(() => queueKeys()).observe(ui.keys);

// ---- generate / stop / reset ---------------------------------------------------------
//
// A run starts at its first token event, whoever asked for it: the Generate button, or a
// script calling window.kvlab.generate() (workshops, tests) — the meter follows the store
// either way. Until then the previous run stays on screen, so a refused request (bad input)
// leaves the page exactly as it was.

function beginRun(chat = false) {
  if (state.run && state.run.x.length > 1) state.ghost = { x: state.run.x, held: state.run.held, label: state.run.label };
  const now = performance.now();
  state.run = { x: [0], held: [0], fp32: [0], fp16: [0], working: [0], ms: [], count: 0, t0: state.pending?.t0 ?? now, last: now,
    label: state.pending?.label ?? (chat ? "the chat" : "a script's run"), prompt: null, texts: [], sawMap: false, chat };
  if (!state.pending && !chat) startOutput(null, false);   // a script's run: its prompt is not known here
  state.pending = null;
  zeroMeter();
  if (!chat) ui.outputStatus.textContent = "generating…";
}

function onToken(ev) {
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

/** A token event's map: positions 0..P-1 are the prompt's (their texts come once, with the
 *  first event), P + i is generated token i (cached once it has been fed back). */
function onMapEvent(run, d) {
  run.sawMap = true;
  if (d.index === 0 || run.prompt === null) {
    run.prompt = Array.isArray(d.prompt_tokens) ? d.prompt_tokens.length : d.tokens_cached - d.index;
    if (Array.isArray(d.prompt_tokens)) run.texts = d.prompt_tokens.slice();
  }
  if (typeof d.token_text === "string") run.texts[run.prompt + d.index] = d.token_text;
  state.map = { ...d.cache_map, index: d.index, prompt: run.prompt, texts: run.texts };
  queueMap();
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
    run.working.push(r.working_bytes);
  }
  drawChart();
  if (!run.sawMap) setTimeout(() => refreshMapFromStore(r), 0);   // after kvlab.generate has returned
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
    cacheMap: true,   // every token event carries the map
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
    if (err?.kind === "store") refreshKeys();   // the engine emptied the store
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
  if (!state.busy && !state.engineBusy) return;
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
  state.map = null;
  mapCursor = null;
  zeroMeter();
  clearOutput();
  drawChart();
  queueMap();
}

/** Long text: about 1,000 tokens of real text (the harness's), for eviction to act on. */
async function onLongText() {
  if (state.busy || !window.kvlab) return;
  ui.longText.disabled = true;
  try {
    const t = await window.kvlab.sampleText({ tokens: 1000 });
    ui.prompt.value = t.text;
    ui.chat.checked = false;
    showMessage(`The prompt is now about ${fmtInt(t.tokens)} tokens of CPython's reference documentation (${t.sources.map((s) => s.name).join(", ")}), without the chat template: the model continues the text.`);
  } catch (err) {
    showMessage((err && err.message) || String(err), "error");
  } finally {
    setButtons();
  }
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
  // the key chart's lesson also stands under the chart: the picture needs its story
  const keyLesson = (state.lessons?.numbers || []).find((n) => n.id === ui.keys.id);
  ui.keysLesson.textContent = keyLesson?.text ?? "";
  ui.keysLesson.hidden = !keyLesson;
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
window.addEventListener("kvlab:notice", (ev) => showNotices(ev.detail?.notices));
window.addEventListener("kvlab:token", onToken);
$("#download-run").addEventListener("click", () => {
  if (state.lastResult) download("kvlab-generate.json", JSON.stringify(state.lastResult, null, 1));
});
window.addEventListener("kvlab:done", onDone);
window.addEventListener("kvlab:reset", () => { if (!state.busy) resetView(); refreshKeys(); });
// after kvlab.generate has returned (the engine is free again), whoever asked for the run
window.addEventListener("kvlab:done", () => setTimeout(refreshKeys, 0));

ui.form.addEventListener("submit", onGenerate);
ui.techniques.addEventListener("change", onPanelChange);
ui.techniques.addEventListener("input", onTechniqueChange);
ui.stop.addEventListener("click", onStop);
window.addEventListener("kvlab:busy", (ev) => { state.engineBusy = Boolean(ev.detail); setButtons(); });
ui.reset.addEventListener("click", onReset);
ui.longText.addEventListener("click", onLongText);
for (const input of [ui.keysLayer, ui.keysHead]) input.addEventListener("input", () => refreshKeys());
ui.map.addEventListener("pointermove", onMapPointer);
ui.map.addEventListener("pointerleave", () => { if (!mapCursor) hideTip(); });
ui.map.addEventListener("keydown", onMapKey);
ui.map.addEventListener("blur", () => { mapCursor = null; hideTip(); });
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
queueMap();
queueKeys();
// the runtime may have finished before this module ran: catch up from window.kvlab
if (body.dataset.state === "ready" && window.kvlab?.info) onReady({ detail: window.kvlab.info });
