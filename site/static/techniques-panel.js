// KV Cache Lab: the Techniques panel — rendered from the registry's description
// (kvlab:ready → techniques), so nothing here knows a technique by name. Its examples,
// eviction presets, captions and rules (one eviction technique at a time; ratio OR budget)
// come from lessons.json (data, not code). It composes the policy every run takes
// (composePolicy), shows it as JSON, and asks the engine at once whether it composes; a
// preset's sentence on what to look for stands under the cache map while the panel matches it.

import { $, el } from "./dom.js";
import { body, state } from "./state.js";

const ui = {
  techniques: $("#techniques"),
  presets: $("#presets"),
  mapLook: $("#map-look"),
  policyJson: $("#policy-json"),
};

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

/** The panel from the registry's list: the examples and presets that name only known
 *  techniques, then a fieldset per technique (a toggle, its parameters, its lesson). */
export function renderTechniques(list) {
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

export function onTechniqueChange() {
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
export function applyPolicy(policy) {
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

/** A policy as the chart names a run: "quant(k_bits=4, v_bits=4) + streaming(…)". */
export function policyLabel(policy) {
  const names = Object.keys(policy);
  if (!names.length) return "full fp32";
  return names.map((n) => `${n}(${Object.entries(policy[n]).map(([k, v]) => `${k}=${v}`).join(", ")})`).join(" + ");
}

// ---- set-up -------------------------------------------------------------------------------

ui.techniques.addEventListener("change", onPanelChange);
ui.techniques.addEventListener("input", onTechniqueChange);
