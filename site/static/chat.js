// KV Cache Lab: the chat panel — a conversation on one compressed cache.
//
// Each message is one window.kvlab.chat turn (kvlab.conversation): only the new turn's
// tokens are read, appended to what the earlier turns left, under the policy the first turn
// took from the Techniques panel. The reply streams in from the token events (they carry
// `turn`; the main meter, chart and map follow them across turns). New conversation, or
// the Prompt card's Reset, empties the cache. A turn the engine refuses says why and the
// conversation stays as it was.

import { $, el } from "./dom.js";
import { fmtBytes } from "./format.js";
import { composePolicy } from "./techniques-panel.js";

const root = $("#chat-card");
const state = { busy: false, turns: 0, reply: null, policy: null };

function say(text, cls = "") {
  const s = $("#chat-status");
  s.textContent = text;
  s.className = `small ${cls}`;
}

function onToken(ev) {
  const d = ev.detail || {};
  if (d.turn === undefined) {   // another run (generate, compare, a lesson) emptied the cache
    if (d.index === 0 && state.turns > 0) {
      state.turns = 0;
      for (const b of document.querySelectorAll("#chat-log .bubble")) b.classList.add("ended");
      say("Another run used the cache, so that conversation ended: the next message starts a new one.");
    }
    return;
  }
  if (state.reply) state.reply.append(d.text);
}

function bubble(role, text) {
  const b = el("div", { class: `bubble ${role}` }, el("span", { class: "who", text: role === "user" ? "you" : "model" }),
    el("span", { class: "said", text }));
  $("#chat-log").append(b);
  return b;
}

async function send(ev) {
  ev?.preventDefault();
  if (state.busy || !window.kvlab) return;
  const box = $("#chat-message"), message = box.value;
  if (window.kvlab.busy) { say("the engine is busy: wait for the running generation", "error"); return; }
  const first = state.turns === 0;
  const max = $("#chat-max").value.trim();
  const opts = { message, maxNewTokens: max === "" ? max : Number(max), cacheMap: true };
  if (first) { opts.new = true; opts.policy = composePolicy(); }
  state.busy = true;
  $("#chat-send").disabled = true;
  const user = bubble("user", message);
  const reply = bubble("model", "");
  state.reply = $(".said", reply);
  say(first ? "reading the conversation's first turn…" : "reading only the new turn…");
  try {
    const r = await window.kvlab.chat(opts);
    state.turns = r.turn + 1;
    if (first) state.policy = r.policy;
    state.reply.textContent = r.text;
    reply.dataset.turn = String(r.turn);
    reply.dataset.ids = r.ids.join(",");
    reply.append(el("span", { class: "turn-figures small muted",
      text: `turn ${r.turn + 1}: read ${r.prompt_ids.length} new tokens from position ${r.read_from} · ` +
            `the cache holds ${fmtBytes(r.cache_bytes)} for ${r.tokens_cached.toLocaleString("en-US")} tokens`}));
    box.value = "";
    say(`${state.turns} turn${state.turns > 1 ? "s" : ""} on one cache · policy ${JSON.stringify(state.policy)}`);
    root.dataset.turns = String(state.turns);
  } catch (err) {
    user.remove(); reply.remove();   // nothing of a refused turn stays; the message stays in the box
    if (err?.kind !== "input") {   // the store failed mid-turn: that conversation is over
      state.turns = 0;
      for (const b of document.querySelectorAll("#chat-log .bubble")) b.classList.add("ended");
    }
    say((err && err.message) || String(err), "error");
  } finally {
    state.reply = null;
    state.busy = false;
    $("#chat-send").disabled = false;
  }
}

/** The conversation is over: the store was emptied (New conversation, or Reset). */
function cleared() {
  state.turns = 0;
  state.policy = null;
  $("#chat-log").replaceChildren();
  root.dataset.turns = "0";
  say("A new conversation: its first message takes the Techniques panel's policy.");
}

async function newConversation() {
  if (state.busy || window.kvlab?.busy) return;
  await window.kvlab.reset();   // emits kvlab:reset → cleared()
}

function init() {
  $("#chat-form").addEventListener("submit", send);
  $("#chat-message").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e); });
  $("#chat-new").addEventListener("click", newConversation);
  window.addEventListener("kvlab:token", onToken);
  window.addEventListener("kvlab:reset", cleared);
  const enable = () => { $("#chat-send").disabled = false; $("#chat-new").disabled = false; };
  if (document.body.dataset.state === "ready") enable();
  window.addEventListener("kvlab:ready", enable);
}

if (root) init();
