// KV Cache Lab: the compare panel — the Prompt card's prompt under two policies, side by side.
//
// window.kvlab.compare runs A, then B, on the one store, then B teacher-forced on A's
// tokens (kvlab.compare). Both texts stream in as their token events arrive (events with
// side "a" | "b"; the main meter ignores them); the first token where they part is marked
// on both; under them a strip chart of KL(A ‖ B) per generated position, with a mark where
// B's top token differs from A's. The numbers are the object `python -m kvlab compare
// --json` prints.

import { $, cssVar, download, el } from "./dom.js";
import { fmtBytes } from "./format.js";
import { composePolicy } from "./techniques-panel.js";

const root = $("#compare");
const state = { busy: false, tokens: { a: [], b: [] }, last: null };
const fmtMs = (x) => (Number.isFinite(x) ? `${x.toFixed(1)} ms` : "—");
const fmtX = (x) => (Number.isFinite(x) ? `${x >= 10 ? x.toFixed(1) : x.toFixed(2)}×` : "—");

/** The policy typed into field `side` ("A" / "B"), or an Error naming the side. */
function readPolicy(side) {
  const text = $(`#compare-policy-${side.toLowerCase()}`).value.trim() || "{}";
  try {
    const p = JSON.parse(text);
    if (p === null || typeof p !== "object" || Array.isArray(p)) throw new Error("it must be a JSON object");
    return p;
  } catch (err) {
    throw new Error(`policy ${side} is not a policy object: ${err.message}`);
  }
}

/** The Prompt card's settings, as kvlab.generate takes them. */
function promptOptions() {
  const max = $("#max-new-tokens").value.trim();
  return {
    prompt: $("#prompt").value,
    chat: $("#chat").checked,
    maxNewTokens: max === "" ? max : Number(max),
    temperature: Number($("#temperature").value || 0),
    seed: Number($("#seed").value || 0),
  };
}

function side(name) {
  return $(`.compare-side[data-side="${name}"]`, root);
}

function clearSide(name) {
  const s = side(name);
  state.tokens[name] = [];
  $("[data-role=text]", s).replaceChildren();
  $("[data-role=figures]", s).textContent = "";
  s.dataset.state = "idle";
}

function onToken(ev) {
  const d = ev.detail || {};
  if (!d.side || !state.busy) return;
  const s = side(d.side);
  s.dataset.state = "running";
  state.tokens[d.side].push(d.text);
  $("[data-role=text]", s).append(el("span", { class: "tok", text: d.text }));
  $("[data-role=figures]", s).textContent = `${d.index + 1} tokens · ${fmtBytes(d.cache_bytes)} held`;
}

/** Redraw a side's text from its pieces, the token at `at` (the first that differs) marked. */
function markDivergence(name, at) {
  const box = $("[data-role=text]", side(name));
  box.replaceChildren(...state.tokens[name].map((t, i) =>
    el("span", { class: i === at ? "tok diverge" : i > at && at !== null ? "tok after" : "tok", text: t,
      title: i === at ? "the first token where A and B differ" : null })));
}

function figures(r, other, name) {
  const lines = [
    `${fmtBytes(r.cache_bytes)} held for ${r.tokens_cached.toLocaleString("en-US")} tokens · ${fmtX(r.fp32_bytes / r.cache_bytes)} smaller than fp32`,
    `savings: eviction ${fmtX(r.savings.eviction)} × quantization ${fmtX(r.savings.quantization)} = ${fmtX(r.savings.total)}`,
    `${fmtMs(r.ms_per_token)} per token · prefill ${fmtMs(r.prefill_ms)}`,
  ];
  if (name === "b") lines.push(`vs A: ${fmtX(other.cache_bytes / r.cache_bytes)} fewer bytes held, ${fmtX(other.ms_per_token / r.ms_per_token)} A's speed`);
  return lines.map((t) => el("span", { text: t }));
}

/** KL per position as bars (log-free, scaled to the largest), top-1 disagreements marked red below. */
function drawStrip(res) {
  const cv = $("#compare-strip"), dpr = window.devicePixelRatio || 1;
  const W = Math.round((cv.clientWidth || 600) * dpr), H = Math.round(90 * dpr), band = Math.round(8 * dpr);
  cv.width = W; cv.height = H; cv.style.height = `${H / dpr}px`;
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, W, H);
  const n = res.kld.length, max = Math.max(1e-6, ...res.kld), bw = W / Math.max(1, n);
  ctx.fillStyle = cssVar("--accent");
  res.kld.forEach((k, j) => {
    const h = Math.round((k / max) * (H - 2 * band - 2));
    ctx.fillRect(Math.floor(j * bw) + 1, H - band - 1 - h, Math.max(1, Math.floor(bw) - 2), h);
  });
  res.top1.forEach((t, j) => {
    ctx.fillStyle = t ? cssVar("--ok") : cssVar("--err");
    ctx.fillRect(Math.floor(j * bw) + 1, H - band + 1, Math.max(1, Math.floor(bw) - 2), band - 1);
  });
  if (res.first_divergence !== null && res.first_divergence < n) {
    ctx.fillStyle = cssVar("--boundary");
    ctx.fillRect(Math.floor(res.first_divergence * bw), 0, Math.max(1, Math.round(dpr)), H);
  }
  cv.setAttribute("aria-label", `KL(A‖B) at ${n} positions, largest ${max.toFixed(3)} nats; ` +
    `top-1 agreement ${(res.top1_agreement * 100).toFixed(0)}%`);
  cv.dataset.positions = String(n);
  $("#compare-strip-scale").textContent = `bar height: KL up to ${max.toFixed(3)} nats · below: green = B's top token is A's, red = not` +
    (res.first_divergence !== null ? ` · orange line: the texts part (token ${res.first_divergence + 1})` : "");
}

function show(res) {
  state.last = res;
  const at = res.first_divergence;
  for (const name of ["a", "b"]) {
    const r = res[name], s = side(name);
    s.dataset.state = "done";
    s.dataset.ids = r.ids.join(",");
    s.dataset.cacheBytes = String(r.cache_bytes);
    if (state.tokens[name].length !== r.ids.length) state.tokens[name] = [r.text];  // no events: the whole text
    markDivergence(name, at);
    $("[data-role=figures]", s).replaceChildren(...figures(r, res.a, name));
  }
  drawStrip(res);
  const same = at === null;
  $("#compare-summary").textContent = `KL(A‖B) ${res.kld_mean?.toFixed(4) ?? "—"} nats on average over ${res.kld.length} positions` +
    ` (teacher-forced on A's tokens) · top-1 agreement ${((res.top1_agreement ?? 0) * 100).toFixed(0)}% · ` +
    (same ? "the same text" : `the texts part at token ${at + 1}`) +
    ` · B holds ${fmtX(res.ratios.cache_bytes)} fewer bytes than A`;
  $("#compare-download").disabled = false;
  root.dataset.done = String(Number(root.dataset.done || 0) + 1);
}

async function run() {
  if (state.busy) return;
  const status = $("#compare-status");
  status.classList.remove("error");
  let opts;
  try {
    opts = { ...promptOptions(), policyA: readPolicy("A"), policyB: readPolicy("B") };
  } catch (err) {
    status.textContent = err.message;
    status.classList.add("error");
    return;
  }
  if (window.kvlab?.busy) { status.textContent = "the engine is busy: wait for the running generation"; return; }
  state.busy = true;
  $("#compare-run").disabled = true;
  const before = { a: [...$("[data-role=text]", side("a")).childNodes], b: [...$("[data-role=text]", side("b")).childNodes] };
  clearSide("a"); clearSide("b");
  status.textContent = "running A, then B, then B on A's tokens…";
  try {
    show(await window.kvlab.compare(opts));
    status.textContent = "";
  } catch (err) {
    status.textContent = (err && err.message) || String(err);
    status.classList.add("error");
    for (const name of ["a", "b"]) {   // a refused compare loses nothing: the last texts come back
      if (!state.tokens[name].length) $("[data-role=text]", side(name)).replaceChildren(...before[name]);
      side(name).dataset.state = "idle";
    }
  } finally {
    state.busy = false;
    $("#compare-run").disabled = false;
  }
}

function init() {
  $("#compare-run").addEventListener("click", run);
  $("#compare-take-b").addEventListener("click", () => {
    $("#compare-policy-b").value = JSON.stringify(composePolicy());
  });
  $("#compare-download").addEventListener("click", () => {
    if (state.last) download("kvlab-compare.json", JSON.stringify(state.last, null, 1));
  });
  window.addEventListener("kvlab:token", onToken);
  const enable = () => { $("#compare-run").disabled = false; };
  if (document.body.dataset.state === "ready") enable();
  window.addEventListener("kvlab:ready", enable);
}

if (root) init();
