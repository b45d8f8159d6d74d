// KV Cache Lab: the presenter view — one lesson at a time, full screen, large type, for a
// projector (laid out for 1280×720).
//
// `?lesson=ID` opens it on that lesson (each lesson has its own URL); each lesson's Present
// button does the same. → / PageDown / Space next, ← / PageUp previous, Home / End the first
// and last, Esc leaves. The lesson shown is the page's own lesson box (lesson.js), moved into
// the view and back: its Run and Replay buttons work the same, and a run started there
// goes on when the view is left. An unknown id says so and lists the known ones.

import { $, el } from "./dom.js";
import { lessonsReady } from "./lesson.js";

const view = el("div", { id: "presenter", class: "presenter", role: "dialog", "aria-modal": "true",
  "aria-label": "Presenter view", hidden: true, tabindex: "-1" });
const state = { lessons: [], at: -1 };

function url(id) {
  const u = new URL(window.location.href);
  if (id) u.searchParams.set("lesson", id); else u.searchParams.delete("lesson");
  return u.pathname + u.search + u.hash;
}

function nav() {
  const n = state.lessons.length, i = state.at;
  const prev = el("button", { type: "button", "data-nav": "prev", text: "← previous", disabled: i <= 0 });
  const next = el("button", { type: "button", "data-nav": "next", text: "next →", disabled: i < 0 || i >= n - 1 });
  const full = el("button", { type: "button", "data-nav": "fullscreen", text: "full screen" });
  const exit = el("button", { type: "button", "data-nav": "exit", text: "leave (Esc)" });
  prev.addEventListener("click", () => go(i - 1));
  next.addEventListener("click", () => go(i + 1));
  full.addEventListener("click", () => (document.fullscreenElement ? document.exitFullscreen() : view.requestFullscreen?.())?.catch?.(() => {}));
  exit.addEventListener("click", leave);
  return el("nav", { class: "presenter-nav", "aria-label": "Lessons" }, prev,
    el("span", { class: "presenter-count", text: i >= 0 ? `lesson ${i + 1} of ${n} · ${state.lessons[i].les.family}` : "" }),
    next, el("span", { class: "spacer" }), full, exit);
}

/** Put every lesson box back where lesson.js made it, in order. */
function restore() {
  const home = $("#lesson-live");
  for (const { box } of state.lessons) home.append(box);
}

function show(i, push = true) {
  restore();
  state.at = i;
  const { les, box } = state.lessons[i];
  view.replaceChildren(nav(), box);
  view.hidden = false;
  view.dataset.lesson = les.id;
  document.body.classList.add("presenting");
  if (push) history.replaceState(null, "", url(les.id));
  view.focus();
}

function unknown(id) {
  restore();
  state.at = -1;
  view.replaceChildren(nav(), el("p", { class: "error", role: "alert",
    text: `unknown lesson ${JSON.stringify(id)}; known: ${state.lessons.map((l) => l.les.id).join(", ") || "none"}` }));
  view.hidden = false;
  view.dataset.lesson = "";
  document.body.classList.add("presenting");
  view.focus();
}

function go(i) {
  if (i >= 0 && i < state.lessons.length) show(i);
}

function leave() {
  restore();
  view.hidden = true;
  state.at = -1;
  document.body.classList.remove("presenting");
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  history.replaceState(null, "", url(null));
}

function onKey(e) {
  if (view.hidden || e.altKey || e.ctrlKey || e.metaKey) return;
  if (/^(INPUT|TEXTAREA|SELECT)$/.test(e.target?.tagName || "")) return;
  if (e.key === " " && /^(BUTTON|A)$/.test(e.target?.tagName || "")) return;   // Space presses the button
  const keys = { ArrowRight: 1, PageDown: 1, " ": 1, ArrowLeft: -1, PageUp: -1 };
  if (e.key === "Escape") leave();
  else if (e.key === "Home") go(0);
  else if (e.key === "End") go(state.lessons.length - 1);
  else if (e.key in keys) go(state.at + keys[e.key]);
  else return;
  e.preventDefault();
}

async function init() {
  document.body.append(view);
  state.lessons = await lessonsReady;
  for (const [i, { les, box }] of state.lessons.entries()) {
    const b = el("button", { type: "button", "data-present": les.id, text: "Present", title: `Open this lesson full screen (?lesson=${les.id})` });
    b.addEventListener("click", () => show(i));
    $(".buttons", box)?.append(b);
  }
  document.addEventListener("keydown", onKey);
  const id = new URLSearchParams(window.location.search).get("lesson");
  if (id !== null) {
    const i = state.lessons.findIndex((l) => l.les.id === id);
    if (i >= 0) show(i, false); else unknown(id);
  }
  view.dataset.ready = "1";
}

init();
