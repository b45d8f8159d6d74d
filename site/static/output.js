// KV Cache Lab: the Output card — the prompt (or a note that a script started the run), then
// the generated text streaming in token by token (the newest one marked), then the run's
// status line; its Download JSON button saves the last run's object as `python -m kvlab
// generate --json` prints it. Chat turns do not stream here (chat.js shows them).

import { $, download, el } from "./dom.js";
import { fmtInt } from "./format.js";
import { state } from "./state.js";

const ui = {
  output: $("#output"),
  outputStatus: $("#output-status"),
};

/** The status line beside the card's title ("generating…", "12 tokens · stopped"). */
export function setOutputStatus(text) {
  ui.outputStatus.textContent = text;
}

/** A run begins: its prompt (null: a script's run, whose prompt is not known here). */
export function startOutput(prompt, chat) {
  ui.output.replaceChildren(
    prompt === null ? el("span", { class: "prompt-text", "data-role": "script", text: "(started by a script through window.kvlab)" })
      : el("span", { class: "prompt-text", "data-role": chat ? "user" : "prompt", text: prompt }),
    el("span", { class: "sep", "aria-hidden": "true" }),
    el("span", { class: "gen" }));
  ui.outputStatus.textContent = "";
}

export function appendToken(text) {
  const gen = $(".gen", ui.output);
  if (!gen || !text) return;
  const old = gen.querySelector(".tok-new");
  if (old) old.classList.remove("tok-new");
  gen.append(el("span", { class: "tok-new", text }));
  const nearBottom = ui.output.scrollHeight - ui.output.scrollTop - ui.output.clientHeight < 40;
  if (nearBottom) ui.output.scrollTop = ui.output.scrollHeight;
}

export function finishOutput(result) {
  state.lastResult = result;
  $("#download-run").disabled = false;
  const gen = $(".gen", ui.output);
  // the result's text is authoritative (a token may end mid-character; the whole decodes right)
  if (gen && typeof result.text === "string") gen.textContent = result.text;
  const why = { eos: "the model ended its answer", length: "reached max new tokens", stopped: "stopped" }[result.stop_reason] || result.stop_reason;
  ui.outputStatus.textContent = `${fmtInt(result.ids?.length ?? 0)} tokens · ${why}`;
}

export function clearOutput() {
  ui.output.replaceChildren(el("span", { class: "placeholder", text: "The generated text streams here, token by token." }));
  ui.outputStatus.textContent = "";
}

/** What the card shows now, to put back when a request is refused before its first token. */
export function saveOutput() {
  return { output: [...ui.output.childNodes], status: ui.outputStatus.textContent };
}

export function restoreOutput(before) {
  ui.output.replaceChildren(...before.output);
  ui.outputStatus.textContent = before.status;
}

$("#download-run").addEventListener("click", () => {
  if (state.lastResult) download("kvlab-generate.json", JSON.stringify(state.lastResult, null, 1));
});
