// KV Cache Lab: start-up. An ES module loaded by index.html; it needs nothing but dist/.
//
// Named steps, each announced as a `kvlab:progress` CustomEvent on window (detail: {step,
// label, done, total, unit}) and kept in window.kvlab.progress:
//   check → manifest → python → engine ┐
//                    → model → session ┴→ store → ready
// (Python boots while the model downloads: they overlap, so their events interleave.)
// <body data-state> is "loading", then "ready" (+ `kvlab:ready`) or "error" (+ `kvlab:error`
// and the message in #boot-error). Tests and scripts wait for data-state="ready", never sleep.
import { simdSupported, instantiateStore, makeHost } from "./host.js";
import { sha256Hex } from "./sha256.js";

const ROOT = new URL("./", import.meta.url);       // dist/ (this file is dist/boot.js)
const url = (path) => new URL(path, ROOT).href;
const params = new URLSearchParams(location.search);

// ---- state and events ---------------------------------------------------------------------
const progress = {};
const stepMs = {};      // how long each step took (they overlap: python/engine ∥ model/session)
let manifest = null;
const notices = [];     // one line each: what this browser or address withholds, and what it costs

/** Say, once, what the page does without a feature (kvlab:notice; the page shows the lines). */
function notice(text) {
  if (notices.includes(text)) return;
  notices.push(text);
  console.info(`kvlab: ${text}`);
  emit("notice", { text, notices: [...notices] });
}

function emit(name, detail) {
  window.dispatchEvent(new CustomEvent(`kvlab:${name}`, { detail }));
}

function report(step, label, done = 0, total = 1, unit = "step", extra = {}) {
  const detail = { step, label, done, total, unit, ...extra };
  progress[step] = detail;
  emit("progress", detail);
}

class BootError extends Error {
  constructor(step, message) { super(message); this.step = step; }
}

/** Run one named step; a failure is tagged with the step's name. */
async function step(name, label, fn) {
  const t0 = performance.now();
  report(name, label, 0, 1);
  try {
    const r = await fn();
    if (progress[name].done < progress[name].total) report(name, label, 1, 1);
    stepMs[name] = Math.round(performance.now() - t0);
    return r;
  } catch (e) {
    throw e instanceof BootError ? e : new BootError(name, `${label} failed: ${e?.message ?? e}`);
  }
}

// ---- checked downloads --------------------------------------------------------------------
const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
// crypto.subtle exists in secure contexts only (https, localhost): elsewhere, plain JS
const sha256 = globalThis.crypto?.subtle
  ? async (bytes) => hex(await crypto.subtle.digest("SHA-256", bytes))
  : async (bytes) => sha256Hex(bytes);

/** Fetch a file of the manifest and check its size and sha256. */
async function fetchChecked(path) {
  const entry = manifest.files[path];
  if (!entry) throw new Error(`${path} is not in manifest.json`);
  const r = await fetch(url(path));
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  const bytes = new Uint8Array(await r.arrayBuffer());
  if (bytes.length !== entry.bytes || (await sha256(bytes)) !== entry.sha256)
    throw new Error(`${path} is corrupted (size or sha256 differs from the manifest); rebuild the site`);
  return bytes;
}

/** Read a response body with byte progress into a Uint8Array of the expected size. */
async function readWithProgress(response, size, onBytes) {
  const out = new Uint8Array(size);
  const reader = response.body.getReader();
  let at = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.length > size) throw new Error("the server sent more bytes than the manifest says");
    out.set(value, at);
    at += value.length;
    onBytes(value.length);
  }
  if (at !== size) throw new Error(`short download: ${at} of ${size} bytes`);
  return out;
}

/**
 * Content-checked parts ({path, bytes, sha256}), from the Cache API `cacheName` when a
 * previous visit stored them, else downloaded, side by side; every part's sha256 is checked,
 * from the network or from the cache (a bad cached part is fetched again, a bad downloaded
 * one is never stored). `use(bytes, part, name)` takes each part as it arrives. Reports the
 * "model" step's bytes; returns {total, fromCache}.
 */
async function fetchParts(parts, cacheName, use) {
  const total = parts.reduce((n, p) => n + p.bytes, 0);
  let cache = null;
  try {
    cache = await caches.open(cacheName);
    for (const name of await caches.keys())   // older models: free their space
      if (name.startsWith("kvlab-") && name !== cacheName) await caches.delete(name);
  } catch { cache = null; }                   // no Cache API (plain http at a LAN address): download
  if (!cache) notice(`no Cache API at this address (not a secure context): the model (${(total / 1e6).toFixed(0)} MB) ` +
                     "is downloaded on every load");
  let done = 0, fromCache = 0;
  const tick = () => report("model", "Model weights", done, total, "bytes", { fromCache });
  tick();
  await Promise.all(parts.map((part, k) => (async () => {
    const name = `${part.path} (weights part ${k + 1} of ${parts.length})`;
    let bytes = null;
    const hit = cache && (await cache.match(url(part.path)));
    if (hit) {
      bytes = new Uint8Array(await hit.arrayBuffer());
      if (bytes.length !== part.bytes || (await sha256(bytes)) !== part.sha256) bytes = null;
      else { done += part.bytes; fromCache += part.bytes; tick(); }
    }
    if (!bytes) {
      const r = await fetch(url(part.path), { cache: "no-store" });
      if (!r.ok) throw new Error(`${name}: HTTP ${r.status}`);
      bytes = await readWithProgress(r, part.bytes, (n) => { done += n; tick(); });
      if ((await sha256(bytes)) !== part.sha256)
        throw new Error(`${name} arrived corrupted (its sha256 differs from manifest.json); it was not kept: ` +
                        "reload to fetch it again, and if this repeats, the server's copy is damaged (rebuild or re-copy the site)");
      if (cache) {
        try { await cache.put(url(part.path), new Response(bytes)); }
        catch (e) { console.warn(`kvlab: could not keep ${part.path} in the Cache API: ${e}`); }
      }
    }
    use(bytes, part, name);
  })()));
  return { total, fromCache };
}

/**
 * The model: its graph, and its weights as the GGUF's own Q4_1 / Q8_0 blocks (96 MB). As each
 * part arrives, `kv_expand` in `expander` (a throw-away instance of the store module) writes
 * its tensors into one buffer laid out as the graph's external data: exactly model.onnx's
 * fp16 bytes (builder/weights.py). Returns {graph, externalData, ...} for InferenceSession.create.
 */
async function loadModel(expander) {
  const w = manifest.weights;
  if (!w) return loadFp16Model();
  const ex = expander;
  const out = ex.kv_alloc(w.bytes);
  const scratch = ex.kv_alloc(Math.max(...w.parts.map((p) => p.bytes)));
  if (out <= 0 || scratch <= 0) throw new Error(`no memory to expand the weights (${(w.bytes / 1e6).toFixed(0)} MB)`);
  let expandMs = 0;
  const expand = (bytes, part, name) => {  // one synchronous stretch: the parts share the scratch
    const t0 = performance.now();
    new Uint8Array(ex.memory.buffer, scratch, part.bytes).set(bytes);
    for (const t of part.tensors) {
      const n = ex.kv_expand(t.type, scratch + t.offset, t.rows, t.cols, out + t.dst, t.ld, t.col0, t.rope_d,
                             t.transpose ? 1 : 0);
      if (n !== t.rows * t.cols) throw new Error(`${name}: expanding ${t.name} failed (kv_expand returned ${n})`);
    }
    expandMs += performance.now() - t0;
  };
  const [graph, { total, fromCache }] = await Promise.all([
    fetchChecked(w.graph.path), fetchParts(w.parts, `kvlab-weights-${w.sha256.slice(0, 16)}`, expand)]);
  const data = new Uint8Array(ex.memory.buffer, out, w.bytes);
  // ?verify=weights: also hash the expanded 257 MB (about a second) against model.onnx's fp16 data
  let verified = null;
  if (params.get("verify") === "weights") {
    verified = (await sha256(data)) === w.sha256;
    if (!verified) throw new Error("the expanded weights differ from model.onnx's fp16 data (sha256): the store module and the builder disagree");
  }
  return { graph, externalData: [{ path: w.data, data }], fromCache, total, expandMs: Math.round(expandMs), verified };
}

/** A site laid out the way it was before the 4-bit download (model.onnx in fp16 parts,
 *  manifest.model_file): benchmarks/download_bench.py builds one to measure the difference. */
async function loadFp16Model() {
  const m = manifest.model_file;
  const whole = new Uint8Array(m.bytes);
  const at = [];
  m.parts.reduce((o, p) => (at.push(o), o + p.bytes), 0);
  const { total, fromCache } = await fetchParts(m.parts, `kvlab-model-${m.sha256.slice(0, 16)}`,
                                                (bytes, part) => whole.set(bytes, at[m.parts.indexOf(part)]));
  return { graph: whole, externalData: [], fromCache, total, expandMs: 0, verified: null };
}

// ---- Python and the engine ----------------------------------------------------------------
async function startPython() {
  const { loadPyodide } = await import(url("vendor/pyodide/pyodide.mjs"));
  return loadPyodide({ indexURL: url("vendor/pyodide/"), packages: [] });
}

async function startEngine(pyodide) {
  const zip = await fetchChecked("kvlab.zip");
  pyodide.unpackArchive(zip, "zip", { extractDir: "/kvlab-site" });
  pyodide.runPython("import sys; sys.path.insert(0, '/kvlab-site')");
  return pyodide.pyimport("kvlab.web");
}

// ---- the sequence -------------------------------------------------------------------------
async function boot() {
  const t0 = performance.now();
  document.body.dataset.state = "loading";

  const simd = await step("check", "Checking WebAssembly", async () => {
    if (typeof WebAssembly !== "object") throw new Error("this browser has no WebAssembly");
    const ok = params.get("store") === "scalar" ? false : simdSupported();
    report("check", "Checking WebAssembly", 1, 1, "step", {
      simd: ok,
      note: ok ? "WebAssembly SIMD: yes (kvstore.wasm)"
               : "no WebAssembly SIMD here: using the scalar KV store (kvstore-scalar.wasm), slower kernels, same bytes",
    });
    return ok;
  });

  manifest = await step("manifest", "Reading the site manifest", async () => {
    const r = await fetch(url("manifest.json"), { cache: "no-cache" });
    if (!r.ok) throw new Error(`manifest.json: HTTP ${r.status}`);
    let m;
    try { m = JSON.parse(await r.text()); }
    catch (e) { throw new Error(`manifest.json is damaged (not JSON: ${e.message}); rebuild or re-copy the site`); }
    if (!m?.files || !(m.weights?.parts || m.model_file?.parts))
      throw new Error("manifest.json lists no files or no model weights; rebuild or re-copy the site");
    return m;
  });

  const ortPromise = import(url("vendor/ort/ort.wasm.min.mjs"));
  // compiled once, instantiated twice: a throw-away instance expands the weights, the other holds the cache
  const storeModule = fetchChecked(simd ? "kvstore.wasm" : "kvstore-scalar.wasm").then((b) => WebAssembly.compile(b));
  const pythonSide = (async () => {
    const pyodide = await step("python", "Starting Python (Pyodide)", startPython);
    const web = await step("engine", "Loading the kvlab engine", () => startEngine(pyodide));
    return { pyodide, web };
  })();
  const modelSide = (async () => {
    let model = await step("model", "Model weights", async () => loadModel(await instantiateStore(await storeModule)));
    const threads = crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    if (!crossOriginIsolated) notice("not cross-origin isolated: the model runs on one thread (slower; the page works the same)");
    const { fromCache, total, expandMs, verified } = model;
    const session = await step("session", "Preparing the model (onnxruntime-web)", async () => {
      const ort = await ortPromise;
      ort.env.wasm.wasmPaths = url("vendor/ort/");
      ort.env.wasm.numThreads = threads;
      ort.env.logLevel = "error";
      const s = await ort.InferenceSession.create(model.graph, {
        executionProviders: ["wasm"], graphOptimizationLevel: "all",
        externalData: model.externalData,
      });
      model = null;   // 257 MB of expanded weights and the instance holding them: ort has its own copy
      return s;
    });
    return { ort: await ortPromise, session, threads, fromCache, total, expandMs, verified };
  })();
  // the first failure of either side ends the boot (the other side's result is dropped)
  const [py, md] = await Promise.all([pythonSide, modelSide]);

  const variant = simd ? "simd" : "scalar";
  const { host, techniques, config, profile } = await step("store", "Starting the KV store", async () => {
    const text = (b) => new TextDecoder().decode(b);
    const [module, configJson, tokenizerJson, profileJson] = await Promise.all([
      storeModule,
      fetchChecked("config.json").then(text),
      fetchChecked("tokenizer.json").then(text),
      // the head profile (pyramidkv's entropy shape, compresskv and duo read it); a site
      // built without one still starts, and those techniques say what they miss
      manifest.files["profile.json"] ? fetchChecked("profile.json").then(text) : null,
    ]);
    const exports = await instantiateStore(module);
    const config = JSON.parse(configJson);
    const host = makeHost({ ort: md.ort, session: md.session, exports, config, configJson, tokenizerJson, variant });
    py.web.init(host, (json) => emit("token", JSON.parse(json)), () => stopRequested, profileJson);
    return { host, config, techniques: JSON.parse(py.web.techniques_json()), profile: py.web.has_profile() };
  });

  api._web = py.web;
  api._host = host;
  const detail = {
    config, techniques, profile, store: variant, threads: md.threads, crossOriginIsolated,
    versions: manifest.versions, model: manifest.model,
    modelFromCache: md.fromCache === md.total, expandMs: md.expandMs, weightsVerified: md.verified, notices,
    bootMs: Math.round(performance.now() - t0), stepMs,
  };
  api.info = detail;
  report("ready", "Ready", 1, 1);
  document.body.dataset.state = "ready";
  emit("ready", detail);
  return detail;
}

function showError(step, message) {
  document.body.dataset.state = "error";
  let el = document.getElementById("boot-error");
  if (!el) {
    el = document.createElement("div");
    el.id = "boot-error";
    el.setAttribute("role", "alert");
    document.body.prepend(el);
  }
  el.hidden = false;
  el.textContent = `KV Cache Lab could not start (${step}): ${message}`;
  emit("error", { step, message });
}

// ---- window.kvlab: the page's API (the UI, tests and workshop scripts use it) ----------------
let busy = false;
let stopRequested = false;
const BUSY_MAP = "the engine is busy: read the map between runs, or generate with cacheMap: true (every kvlab:token event carries it)";
const BUSY_KEYS = "the engine is busy: read a key's channels between runs";

const BUSY = "the engine is busy: wait for it, or call kvlab.stop()";

/** Run one engine call that uses the store, alone: refused (with `message`) while another
 *  runs; kvlab.stop() ends it after the current model run. kvlab:busy (true, then false)
 *  tells the page, so its Stop button works for every panel's run. */
async function exclusive(fn, message = BUSY) {
  if (busy) throw new Error(message);
  busy = true;
  stopRequested = false;
  emit("busy", true);
  try {
    return await fn();
  } finally {
    busy = false;
    emit("busy", false);
  }
}

async function callWeb(fn) {
  await api.start();
  let res;
  try {
    res = JSON.parse(await fn(api._web));
  } catch (e) {   // a Python exception that escaped the engine: report it, stay usable
    res = { error: String(e?.message ?? e).trim().split("\n").pop(), kind: "internal" };
  }
  if (res.error) {
    const err = new Error(res.error);
    err.kind = res.kind;
    throw err;
  }
  return res;
}

const api = {
  progress,
  info: null,
  ready: null,

  /** Generate; resolves with the object of `python -m kvlab generate --json`. With
   *  `cacheMap: true` every kvlab:token event also carries `cache_map` (see cachemap()),
   *  the first one `prompt_tokens` (each prompt token's text) and each `token_text`. */
  async generate(opts = {}) {
    return exclusive(async () => {
      const res = await callWeb((web) => web.generate_json(JSON.stringify(opts)));
      emit("done", res);
      return res;
    }, "a generation is already running: wait for it, or call kvlab.stop()");
  },

  /** Does a policy run as given? Resolves with {policy} (defaults filled in), rejects with
   *  the engine's words (a bad setting, two techniques that cannot combine). Runs nothing,
   *  so it answers while a generation runs too. */
  async checkPolicy(policy = {}) {
    return callWeb((web) => web.check_policy_json(JSON.stringify(policy)));
  },

  /** One prompt under two policies, A then B on the one store, and B teacher-forced on A's
   *  tokens: resolves with the object of `python -m kvlab compare --json` ({prompt_ids, a, b,
   *  kld, top1, kld_mean, top1_agreement, first_divergence, ratios}). opts: generate's, with
   *  policyA (default: the full cache) and policyB instead of policy. Its kvlab:token events
   *  carry side: "a" | "b". */
  async compare(opts = {}) {
    return exclusive(() => callWeb((web) => web.compare_json(JSON.stringify(opts))));
  },

  /** One chat turn on the cache the earlier turns left (kvlab.conversation): resolves with
   *  `python -m kvlab chat --json`'s object for the turn ({turn, read_from, prompt_ids: the
   *  tokens this turn read, ids, text, …the meter}). opts: {message, new, policy,
   *  maxNewTokens, temperature, topK, topP, seed, cacheMap}; `new: true` (or no
   *  conversation yet) starts one under `policy`. Token events carry `turn`. reset() ends it. */
  async chat(opts = {}) {
    return exclusive(() => callWeb((web) => web.chat_json(JSON.stringify(opts))));
  },

  /** Measure a policy's quality against the full cache; resolves with the object of
   *  `python -m kvlab eval --json`. opts: {task, policy, context, seed, n, positions}. */
  async evaluate(opts = {}) {
    if (busy) throw new Error("the engine is busy: wait for it (an evaluation runs to its end)");
    busy = true;
    try {
      return await callWeb((web) => web.evaluate_json(JSON.stringify(opts)));
    } finally {
      busy = false;
    }
  },

  /** A lesson's question as the engine reads it (`kvlab.lesson.item`): {task, context,
   *  seed, index, prompt, question, tokens, question_at, key, code, others, facts: [{key,
   *  code, asked, sentence, digits}]}. spec: a lesson's `item` ({task, context, seed, index}). */
  async lessonItem(spec = {}) {
    return callWeb((web) => web.lesson_item_json(JSON.stringify(spec)));
  },

  /** One run of a lesson: the question generated under `policy` (token events carry the
   *  cache map, as generate with cacheMap: true), then what it answered, where each digit
   *  came from and what the cache kept of every fact — one run of `python -m kvlab lesson
   *  ID --json`. opts: {item, policy}. Emits kvlab:done with the run's generate result. */
  async lessonRun(opts = {}) {
    return exclusive(async () => {
      const res = await callWeb((web) => web.lesson_run_json(JSON.stringify(opts)));
      emit("done", res.result);
      return res;
    });
  },

  /** Stop the running generation after the current token (its stop_reason: "stopped"), or
   *  the running profile after the current model run (it rejects, err.kind "stopped"). */
  stop() { if (busy) stopRequested = true; return busy; },

  get busy() { return busy; },

  /** Empty the KV store: its bytes go to 0. */
  async reset() {
    if (busy) throw new Error("a generation is running: stop it before resetting");
    const res = await callWeb((web) => web.reset_json());
    emit("reset", res);
    return res;
  },

  /** Which entries the cache keeps now (`python -m kvlab cachemap`'s map): {tokens,
   *  kv_heads, layers: one string per layer, one character per position (the bit mask of
   *  the KV heads keeping it, '0'..'7'), kept: live entries per layer and KV head,
   *  positions: per layer and head the kept positions}. opts: {positions: false} leaves
   *  `positions` out. Between runs only: during one, the token events carry the map. */
  async cachemap(opts = {}) {
    const refuse = () => { if (busy) throw new Error(BUSY_MAP); };
    refuse();
    // checked again right before Python: a run may have started while start() resolved
    return callWeb((web) => { refuse(); return web.cache_map_json(JSON.stringify(opts)); });
  },

  /** One real key vector's channels before and after the random-sign Walsh-Hadamard
   *  rotation (quant's `rotate`, the turbo formats): the newest live entry of a layer and
   *  KV head in the store now, as the model reads it (dequantized under a quant policy).
   *  opts: {layer, head} (default 0, 0). Resolves with {layer, head, position, channels,
   *  rotated, peak_to_rms: {before, after}, norm: {before, after}}; rejects with
   *  err.kind "input" for a bad layer or head, or when nothing is cached. Between runs only. */
  async keyChannels(opts = {}) {
    const refuse = () => { if (busy) throw new Error(BUSY_KEYS); };
    refuse();
    return callWeb((web) => { refuse(); return web.key_channels_json(JSON.stringify(opts)); });
  },

  /** About `tokens` tokens of real text (CPython's reference documentation, as the
   *  quality harness reads it), for long prompts: {text, tokens, sources}. */
  async sampleText(opts = {}) {
    return callWeb((web) => web.sample_text_json(JSON.stringify(opts)));
  },

  /** The technique registry (each technique's name, family, parameters). */
  async techniques() {
    return (await api.start()).techniques;
  },

  /** Run the head profiler on the builder's texts (profile_texts.json); resolves with the
   *  object of `python -m kvlab profile --json` plus `observations` (what `kvlab observe`
   *  derives from it). opts override its settings ({context,
   *  queries, positions, ...}). Emits kvlab:profile-progress {stage, done, total}. */
  async profile(opts = {}) {
    if (busy) throw new Error("the engine is busy: wait for it, or call kvlab.stop()");
    busy = true;
    stopRequested = false;   // kvlab.stop() ends the profile after the current model run
    try {
      await api.start();
      const texts = new TextDecoder().decode(await fetchChecked("profile_texts.json"));
      const progress = (json) => emit("profile-progress", JSON.parse(json));
      const res = await callWeb((web) => web.profile_json(JSON.stringify(opts), texts, progress));
      emit("profile-done", res);
      return res;
    } finally {
      busy = false;
    }
  },
};

/** Start the engine (once); resolves with the ready detail. Pages whose <body> has
 *  data-boot="manual" (the profile page) start it only when asked. */
api.start = () => {
  if (!api.ready) {
    api.ready = boot().catch((e) => {
      const stepName = e?.step ?? "boot";
      console.error("kvlab: boot failed", e);
      showError(stepName, e?.message ?? String(e));
      throw e;
    });
    api.ready.catch(() => {});   // handled above; keep the console free of "unhandled rejection"
  }
  return api.ready;
};

window.kvlab = api;
if (document.body.dataset.boot !== "manual") api.start();
