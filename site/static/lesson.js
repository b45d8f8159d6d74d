// KV Cache Lab: the page's live lessons (lessons.json's "lessons"; seed 004's is the first).
//
// A lesson runs one retrieval question under a few policies, one after the other on the one
// store (window.kvlab.lessonRun: the main meter and map follow each run live), and shows per
// run what the answer was, where each digit could have come from (the facts whose code has
// it at that place), how much of every fact the cache kept, whether chunks routed the asked
// fact, and a small cache map with the facts' digits and the routed chunks marked. The
// numbers are the objects `python -m kvlab lesson ID --json` prints.
//
// Every lesson can also be replayed from the builder's recording (lessons_recorded.json:
// the same objects, made natively at build time), for a browser too slow to run it live or
// one without WebAssembly SIMD; a replayed run says so on its panel.

import { $, cssVar, el } from "./dom.js";
import { paintKeepMap } from "./keepmap.js";

const MAP_W = 320, ROW = 3, GAP = 0;   // CSS px of a run's small map (30 layers → 90 px)
const pct = (x) => `${Math.round(x * 100)}%`;
const fmtRatio = (r) => `${r >= 10 ? r.toFixed(1) : r.toFixed(2)}×`;

const root = $("#lesson-live");
let madeReady;
/** Resolves with the lessons as built ([{les, box}], in lessons.json's order; [] when the
 *  file could not be read): the presenter view (presenter.js) shows these very boxes. */
export const lessonsReady = new Promise((resolve) => { madeReady = resolve; });
const state = { lessons: [], recorded: null, busy: false };

function section(les) {
  const status = el("p", { class: "lesson-status small muted", "aria-live": "polite" });
  const facts = el("ol", { class: "lesson-facts small", "aria-label": "The facts in the text, in order" });
  const runs = el("div", { class: "lesson-runs" });
  const button = el("button", { type: "button", class: "primary", disabled: true, "data-lesson": les.id, text: "Run the lesson" });
  const replay = el("button", { type: "button", disabled: true, "data-replay": les.id, text: "Replay the recording",
    title: "Show the builder's native run of this lesson at once: the same tokens and bytes, recorded, not live" });
  const panels = les.runs.map((r, i) => {
    const p = el("article", { class: "lesson-run", "data-run": String(i), "data-state": "idle" },
      el("h3", { text: r.label }),
      el("pre", { class: "policy small" }, el("code", { text: JSON.stringify(r.policy) })),
      el("div", { class: "lesson-answer", "data-role": "answer", text: "—" }),
      el("p", { class: "small", "data-role": "verdict" }),
      el("p", { class: "small recorded-mark", "data-role": "source", hidden: true }),
      el("canvas", { class: "lesson-map", "data-role": "map", role: "img", "aria-label": "cache map: not run yet" }),
      el("p", { class: "small muted", "data-role": "figures" }),
      el("p", { class: "look small", text: r.look }));
    runs.append(p);
    return p;
  });
  const box = el("div", { class: "lesson", "data-lesson": les.id },
    el("h3", { text: les.title }),
    el("p", { text: les.idea }),
    les.formula ? el("p", { class: "small" }, el("strong", { text: "Formula. " }), les.formula) : null,
    el("p", { class: "small" }, el("strong", { text: "The seed. " }), les.claim),
    les.measured ? el("p", { class: "small" }, el("strong", { text: "Measured here. " }), les.measured) : null,
    el("div", { class: "buttons" }, button, replay, status),
    facts, runs);
  const parts = { button, replay, status, facts, panels };
  button.addEventListener("click", () => runLesson(les, parts));
  replay.addEventListener("click", () => replayLesson(les, parts));
  return { box, button, replay, les };
}

function showFacts(list, item) {
  list.replaceChildren(...item.facts.map((f) => el("li", { class: f.asked ? "asked" : "" },
    el("code", { text: `${f.key} = ${f.code}` }),
    el("span", { class: "muted", text: ` · tokens ${f.digits[0]}–${f.digits[1] - 1}${f.asked ? " · asked" : ""}` }))));
}

/** The answer's digits, each coloured by where it could come from. */
function answerNodes(run, item) {
  const asked = item.key;
  const nodes = run.origin.map((o) => {
    const from = o.facts.includes(asked) ? "asked" : o.facts.length ? "other" : "none";
    const title = o.facts.length ? `digit ${o.place + 1} "${o.digit}": in the code of ${o.facts.join(", ")}` : `digit ${o.place + 1} "${o.digit}": in no fact's code at that place`;
    return el("span", { class: `digit from-${from}`, title, text: o.digit });
  });
  const rest = run.text.slice(run.text.indexOf(run.digits) + run.digits.length).trim();
  return [...nodes, el("span", { class: "muted", text: rest ? ` ${rest.slice(0, 24)}` : "" })];
}

/** Where chunks put the asked fact's digits: a routed chunk, the exact sinks / recent tokens, or a summary. */
function routing(run, fact) {
  const toks = [];
  for (let t = fact.digits[0]; t < fact.digits[1]; t++) toks.push(t);
  const covered = (spans) => toks.every((t) => (spans || []).some(([a, b]) => a <= t && t < b));
  const routed = run.chunks?.routed || [], exact = run.chunks?.exact || [];
  if (covered(exact)) return "routing: not needed, the fact lies in the exact sinks or recent tokens";
  if (covered([...routed, ...exact])) return "routing: the fact's chunk routed ✓";
  return "routing: the fact's chunk not routed ✗";
}

function verdict(run, item) {
  const asked = run.facts.find((f) => f.asked);
  const what = run.correct ? "right" : run.crossover ? "crossover: another fact's code" : run.digits ? "wrong" : "no digits";
  const bits = [`${what} (asked ${item.key} = ${item.code})`,
    `its code kept exactly by ${pct(asked.kept)} of (layer, KV head) pairs`];
  if ("routed" in asked) bits.push(routing(run, asked));
  return bits.join(" · ");
}

function drawRunMap(cv, run, item) {
  const m = run.map, dpr = window.devicePixelRatio || 1;
  const W = Math.round((cv.clientWidth || MAP_W) * dpr), rowH = Math.max(1, Math.round(ROW * dpr));
  const band = Math.round(6 * dpr), L = m.layers.length, H = L * rowH + 2 * band;
  cv.width = W; cv.height = H; cv.style.height = `${H / dpr}px`;
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, W, H);
  paintKeepMap(ctx, m.layers, m.tokens, m.kv_heads, { W, rowH, gap: GAP, top: band });
  const x = (p) => Math.round((p / m.tokens) * W);
  // above: every fact's digits (the asked one in the boundary colour); below: routed chunks
  for (const f of item.facts) {
    ctx.fillStyle = f.asked ? cssVar("--boundary") : cssVar("--fp32");
    ctx.fillRect(x(f.digits[0]), 0, Math.max(2, x(f.digits[1]) - x(f.digits[0])), band - 1);
  }
  ctx.fillStyle = cssVar("--ok");
  for (const [a, b] of run.chunks?.routed || []) ctx.fillRect(x(a), H - band + 1, Math.max(2, x(b) - x(a)), band - 1);
  cv.setAttribute("aria-label", `cache map of ${m.tokens} positions × ${L} layers; marks above: the facts' digits, below: routed chunks`);
  cv.dataset.tokens = String(m.tokens);
}

function showRun(p, run, item, source = null) {
  p.dataset.state = run.correct ? "right" : run.crossover ? "crossover" : "wrong";
  p.dataset.source = source ? "recorded" : "live";
  p.dataset.ids = run.ids.join(",");
  p.dataset.cacheBytes = String(run.result.cache_bytes);
  const mark = $("[data-role=source]", p);
  mark.hidden = !source;
  mark.textContent = source ? `Recorded, not live: ${source}` : "";
  $("[data-role=answer]", p).replaceChildren(...answerNodes(run, item));
  $("[data-role=verdict]", p).textContent = verdict(run, item);
  drawRunMap($("[data-role=map]", p), run, item);
  const r = run.result;
  $("[data-role=figures]", p).textContent =
    `${fmtRatio(run.ratio_vs_fp32)} smaller than fp32 · ${r.cache_bytes.toLocaleString("en-US")} bytes held` +
    (run.chunks ? ` · ${run.chunks.summarized.length} chunks summarized, ${run.chunks.routed.length} routed` : "");
}

function clearRuns(panels, status) {
  for (const p of panels) {
    p.dataset.state = "idle";
    $("[data-role=answer]", p).textContent = "—";
    $("[data-role=verdict]", p).textContent = "";
    $("[data-role=source]", p).hidden = true;
  }
  status.classList.remove("error");
}

function replayLesson(les, { status, facts, panels }) {
  if (state.busy) { status.textContent = "a live run is going: wait for it"; return; }
  const rec = state.recorded?.lessons?.[les.id];
  if (!rec) { status.textContent = "no recording of this lesson was shipped"; status.classList.add("error"); return; }
  clearRuns(panels, status);
  const prov = state.recorded.provenance;
  const source = `the builder's run on the ${prov.host}, ${prov.date.slice(0, 10)}`;
  showFacts(facts, rec.item);
  rec.runs.forEach((run, i) => { showRun(panels[i], run, rec.item, source); delete panels[i].dataset.seconds; });
  status.textContent = `replayed: ${rec.runs.length} runs recorded natively by the builder (${rec.seconds} s there), not run on this page`;
  root.dataset.replayed = les.id;
}

async function runLesson(les, { button, status, facts, panels }) {
  if (state.busy || window.kvlab?.busy) { status.textContent = "the engine is busy: wait for the running generation"; return; }
  state.busy = true;
  button.disabled = true;
  clearRuns(panels, status);
  try {
    status.textContent = "reading the question…";
    const item = await window.kvlab.lessonItem(les.item);
    showFacts(facts, item);
    for (const [i, spec] of les.runs.entries()) {
      const p = panels[i];
      p.dataset.state = "running";
      status.textContent = `run ${i + 1} of ${les.runs.length}: ${spec.label} — reading ${item.tokens.toLocaleString("en-US")} tokens…`;
      const t0 = performance.now();
      const run = await window.kvlab.lessonRun({ item: les.item, policy: spec.policy });
      showRun(p, run, item);
      p.dataset.seconds = ((performance.now() - t0) / 1000).toFixed(1);
    }
    status.textContent = `done: ${les.runs.length} runs, ${panels.map((p) => p.dataset.seconds).join(" + ")} s`;
    root.dataset.done = les.id;
  } catch (err) {
    status.textContent = (err && err.message) || String(err);
    status.classList.add("error");
    for (const p of panels) if (p.dataset.state === "running") p.dataset.state = "idle";
  } finally {
    state.busy = false;
    button.disabled = false;
  }
}

async function load() {
  try {
    const res = await fetch("./lessons.json");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    state.lessons = (await res.json()).lessons || [];
  } catch (err) {
    root.replaceChildren(el("p", { class: "muted small", text: `The lessons could not be read (lessons.json: ${err.message}).` }));
    madeReady([]);
    return;
  }
  const made = state.lessons.map(section);
  root.replaceChildren(...made.map((s) => s.box));
  madeReady(made.map(({ les, box }) => ({ les, box })));
  // the recording replays whatever the engine's state (booting, failed, no SIMD)
  fetch("./lessons_recorded.json").then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
    .then((rec) => {
      state.recorded = rec;
      for (const s of made) s.replay.disabled = !rec.lessons?.[s.les.id];
    })
    .catch((err) => { for (const s of made) s.replay.title = `no recording: ${err.message}`; });
  // a browser where the engine cannot start (no WebAssembly, a failed download) still has the recording
  window.addEventListener("kvlab:error", (ev) => {
    for (const s of made) {
      const status = $(".lesson-status", s.box);
      status.textContent = `The engine could not start in this browser (${ev.detail?.message || "error"}): ` +
        "Replay the recording shows the builder's run of this lesson.";
    }
  });
  const enable = () => { for (const s of made) s.button.disabled = false; };
  if (document.body.dataset.state === "ready") enable();
  window.addEventListener("kvlab:ready", enable);
}

if (root) load(); else madeReady([]);
