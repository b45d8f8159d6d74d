// KV Cache Lab: the demo page's shared state — the one object its panels read and write
// (ui.js and the modules it wires: boot-view.js, run.js, prompt-card.js, techniques-panel.js,
// chart.js, cachemap.js, …), and the model's shape as the template wrote it on <body>. A
// panel's private state (the chart's uPlot, the map's keyboard cursor, the key chart's last
// read) stays in its own module; what more than one panel touches lives here.

export const body = document.body;
export const N_LAYERS = Number(body.dataset.nLayers) || 30;
export const HEAD_DIM = Number(body.dataset.headDim) || 64;

export const state = {
  techniques: [],
  lessons: null,
  busy: false,
  engineBusy: false, // a run of another panel (compare, chat, a lesson): kvlab:busy
  bootStart: performance.now(),
  config: null,     // the model's config, from kvlab:ready
  run: null,        // the current run: {x: [], held: [], fp32: [], fp16: [], ms: [], t0}
  ghost: null,      // the previous run's held line: {x: [], held: [], label}
  pending: null,    // a Generate click waiting for its first token: {label, t0}
  lastResult: null, // the last run's result (Download JSON)
  map: null,        // the newest cache map: {index, tokens, kv_heads, layers, kept, prompt, texts}
  drawn: null,      // the map the canvas shows (the newest, once a frame has drawn it)
  draws: 0,
  preset: null,     // the preset last applied (its "look" sentence shows while the panel matches it)
};
