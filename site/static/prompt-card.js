// KV Cache Lab: the Prompt card — the prompt and its settings, and Generate, Stop, Reset
// and Long text, with the page's message line under them. Generate sends the Techniques
// panel's policy with cacheMap: true (every token event carries the map); Stop ends any
// panel's run (kvlab:busy tells the page another one is under way); a request the engine
// refuses says why and leaves the page as it was. setButtons() enables what the runtime's
// state allows, on this card and on the Techniques panel.

import { $ } from "./dom.js";
import { fmtInt } from "./format.js";
import { refreshKeys } from "./keychart.js";
import { restoreOutput, saveOutput, setOutputStatus, startOutput } from "./output.js";
import { beginRun, resetView, showResult } from "./run.js";
import { body, state } from "./state.js";
import { composePolicy, onTechniqueChange, policyLabel } from "./techniques-panel.js";

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
  longText: $("#long-text"),
  message: $("#message"),
};

// ---- messages ------------------------------------------------------------------------

export function showMessage(text, kind = "info") {
  ui.message.textContent = text;
  ui.message.classList.toggle("error", kind === "error");
  ui.message.dataset.kind = kind;
  ui.message.hidden = !text;
}
const clearMessage = () => showMessage("");

// ---- buttons -------------------------------------------------------------------------

export function setButtons() {
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

// ---- generate / stop / reset ---------------------------------------------------------

export async function onGenerate(ev) {
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
  const before = saveOutput();
  state.pending = { label: policyLabel(args.policy), t0: performance.now() };
  state.busy = true;
  setButtons();
  startOutput(prompt, chat);
  setOutputStatus("reading the prompt…");
  try {
    const result = await window.kvlab.generate(args);
    if (state.pending) beginRun();   // no token event came (e.g. zero new tokens)
    showResult(result);
    if (result.stop_reason === "stopped") showMessage(`Stopped after ${fmtInt(result.ids?.length ?? 0)} tokens; the cache still holds them.`);
  } catch (err) {
    showMessage((err && err.message) || String(err), "error");
    if (err?.kind === "store") refreshKeys();   // the engine emptied the store
    if (state.pending) {             // refused before any token: put the view back
      restoreOutput(before);
    } else {
      if (state.run) state.run.done = true;
      setOutputStatus("interrupted by an error");
    }
  } finally {
    state.pending = null;
    state.busy = false;
    setButtons();
  }
}

export function onStop() {
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

// ---- set-up -------------------------------------------------------------------------------

ui.form.addEventListener("submit", onGenerate);
ui.stop.addEventListener("click", onStop);
ui.reset.addEventListener("click", onReset);
ui.longText.addEventListener("click", onLongText);
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); onGenerate(); }
});
