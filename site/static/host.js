// KV Cache Lab: the JavaScript half of the browser host (kvlab/host/browser.py is the other).
//
// One model run = ONE call from Python: run(ids, positions, tablePtr). Here we read the step
// table out of the KV store's memory, hand onnxruntime-web Float32Array *views* of that memory
// as the past K/V/mask (ort copies inputs into its own heap at run()), await the run, and copy
// the outputs back into the store at the table's pointers. No float ever crosses into Python.

// ---- the step table (docs/store.md "The step protocol"): int32 words ------------------------
const HEAD = 4, PER_LAYER = 8;

/** Feature test: does this browser validate a module using a v128 instruction? */
export function simdSupported() {
  // (module (func (result v128) i32.const 0 i8x16.splat i8x16.popcnt))
  const bytes = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0,
    10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);
  return WebAssembly.validate(bytes);
}

/** A fresh instance of the KV store (its own memory) from its compiled module; no imports. */
export async function instantiateStore(module) {
  return (await WebAssembly.instantiate(module, {})).exports;
}

/**
 * The object Python's BrowserHost wraps.
 * @param ort        the onnxruntime-web module
 * @param session    an ort.InferenceSession of model.onnx
 * @param exports    the KV store instance's exports
 * @param config     config.json (object); configJson / tokenizerJson: their text
 */
export function makeHost({ ort, session, exports, config, configJson, tokenizerJson, variant }) {
  const mem = exports.memory;
  const L = config.n_layers, KVH = config.n_kv_heads, QH = config.n_heads, D = config.head_dim;
  const VOCAB = config.vocab;
  // input/output names, built once (string building per step is measurable at 60 names)
  const names = [];
  for (let i = 0; i < L; i++) {
    names.push({
      pk: `past_key_values.${i}.key`, pv: `past_key_values.${i}.value`, pm: `past_mask.${i}`,
      nk: `new.${i}.key`, nv: `new.${i}.value`, at: `attn.${i}`, en: `entropy.${i}`,
    });
  }
  const f32 = (buf, ptr, n) => new Float32Array(buf, ptr, n);

  const host = {
    exports, config, configJson, tokenizerJson, variant,
    exportNames: () => Object.keys(exports),
    now: () => performance.now(),
    // a copy: Python turns it into bytes
    read: (ptr, n) => new Uint8Array(mem.buffer, ptr, n).slice(),
    // a live view: Python assigns into it (taken fresh: memory growth detaches old views)
    view: (ptr, n) => new Uint8Array(mem.buffer, ptr, n),
    lastRunMs: 0,

    /** One model run of S new tokens (see the module comment). */
    async run(ids, positions, tablePtr) {
      const t0 = performance.now();
      const S = ids.length;
      let buf = mem.buffer;
      let w = new Int32Array(buf, tablePtr, HEAD + PER_LAYER * L);
      if (w[0] !== L || w[1] !== S) throw new Error(`step table mismatch: layers ${w[0]}, S ${w[1]} (expected ${L}, ${S})`);
      const feeds = {
        input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, S]),
        position_ids: new ort.Tensor("int64", BigInt64Array.from(positions, BigInt), [1, S]),
      };
      for (let i = 0; i < L; i++) {
        const o = HEAD + PER_LAYER * i, P = w[o + 3], n = names[i];
        feeds[n.pk] = new ort.Tensor("float32", f32(buf, w[o], KVH * P * D), [1, KVH, P, D]);
        feeds[n.pv] = new ort.Tensor("float32", f32(buf, w[o + 1], KVH * P * D), [1, KVH, P, D]);
        feeds[n.pm] = new ort.Tensor("float32", f32(buf, w[o + 2], KVH * P), [1, KVH, P]);
      }
      const out = await session.run(feeds);
      // nothing calls the store while ort runs (one generation at a time), but take the
      // buffer again anyway: a detached view would fail silently with length 0
      buf = mem.buffer;
      w = new Int32Array(buf, tablePtr, HEAD + PER_LAYER * L);
      f32(buf, w[2], VOCAB).set(out.logits.data);
      for (let i = 0; i < L; i++) {
        const o = HEAD + PER_LAYER * i, P = w[o + 3], n = names[i];
        f32(buf, w[o + 4], KVH * S * D).set(out[n.nk].data);
        f32(buf, w[o + 5], KVH * S * D).set(out[n.nv].data);
        f32(buf, w[o + 6], QH * (P + S)).set(out[n.at].data);
        f32(buf, w[o + 7], QH).set(out[n.en].data);
      }
      for (const k in out) out[k].dispose?.();
      host.lastRunMs = performance.now() - t0;
      // ort resolves its promise as a microtask, so a whole generation would otherwise run
      // without letting the page take a click (Stop) or paint: yield one macrotask per run
      await nextTask();
    },
  };
  return host;
}

/** Resolves after the browser has had a turn at its task queue (no timer clamping). */
function nextTask() {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => resolve();
    ch.port2.postMessage(0);
  });
}
