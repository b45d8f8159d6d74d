// KV Cache Lab: the start-up card and the header's runtime facts. boot.js announces its
// named steps (kvlab:progress), what the browser withholds (kvlab:notice), a failure
// (kvlab:error) and the end (kvlab:ready); this module draws them: a progress bar per step
// (a step the template does not list is added), the one-line notices, the failed step with
// its message, then "Ready in … s" and the KV store / threads / isolation facts. ui.js
// listens to the events and calls these.

import { $, el } from "./dom.js";
import { state } from "./state.js";

const ui = {
  boot: $("#boot"),
  bootSteps: $("#boot-steps"),
  bootError: $("#boot-error"),
  bootElapsed: $("#boot-elapsed"),
};

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

export function onProgress(ev) {
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
export function showNotices(lines) {
  const ul = $("#boot-notes");
  if (!ul || !lines?.length) return;
  ul.replaceChildren(...lines.map((text) => el("li", { text })));
  ul.hidden = false;
}

/** Start-up failed at `step` (if known): mark it and say why, named after the step. */
export function showBootFailure(step, message) {
  if (step) setStep(stepItem(step), "error", 1);
  ui.boot.classList.add("failed");
  $("#boot-title").textContent = "Start-up failed";
  const label = step ? stepItem(step).querySelector(".step-label").textContent || step : "";
  const text = message || "unknown error";
  ui.bootError.textContent = label && !text.startsWith(label) ? `${label}: ${text}` : text;
  ui.bootError.hidden = false;
}

// ---- header facts ---------------------------------------------------------------------

function setFact(id, text, cls) {
  const dd = $(id);
  dd.textContent = text;
  dd.className = cls || "";
}

/** The runtime is up (kvlab:ready's detail, or window.kvlab.info): every step done, the
 *  time it took, and the header's facts. */
export function showReady(d) {
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
}
