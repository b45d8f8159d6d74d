// KV Cache Lab: painting a cache map (which entries each layer keeps), shared by the page's
// map and the lesson's small maps.
//
// A map is one string per layer, one character per position: the bit mask of the KV heads
// that keep the entry, in base 32 ('0' none .. '7' all three; wasm kv_keep_map).

export const MAP_STOPS = ["#ebe8df", "#a9d3d8", "#4f9ca7", "#17545d"];   // kept by none … all heads

/** map character → heads keeping the entry */
export const BITS = new Uint8Array(128);
for (let c = 0; c < 128; c++) {
  const v = parseInt(String.fromCharCode(c), 32);
  BITS[c] = Number.isNaN(v) ? 0 : v.toString(2).split("").filter((b) => b === "1").length;
}

export const hexRgb = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));

/** 256 shades, kept share 0 … 1 (ABGR words for ImageData); k/3 lands exactly on a stop. */
export const SHADES = (() => {
  const stops = MAP_STOPS.map(hexRgb), lut = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const f = (i / 255) * (stops.length - 1), j = Math.min(stops.length - 2, Math.floor(f)), t = f - j;
    const [r, g, b] = [0, 1, 2].map((k) => Math.round(stops[j][k] + (stops[j + 1][k] - stops[j][k]) * t));
    lut[i] = ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
  }
  return lut;
})();

/** Paint `layers` (T positions each) into a W-pixel-wide image, a row of rowH pixels per
 *  layer and gap between rows, at `top`; a pixel column covering several positions shows
 *  their mean share of heads kept. */
export function paintKeepMap(ctx, layers, T, kvHeads, { W, rowH, gap, top = 0 }) {
  const L = layers.length, H = L * (rowH + gap) - gap;
  if (!T || !L) return;
  const img = ctx.createImageData(W, H);   // transparent: the gaps show the card
  const px = new Uint32Array(img.data.buffer);
  const row = new Uint32Array(W);
  const scale = 255 / (kvHeads || 1);
  for (let l = 0; l < L; l++) {
    const s = layers[l] || "";
    for (let x = 0; x < W; x++) {
      const a = Math.floor((x * T) / W);
      const b = Math.max(a + 1, Math.floor(((x + 1) * T) / W));
      let k = 0;
      for (let p = a; p < b; p++) k += BITS[s.charCodeAt(p)] || 0;
      row[x] = SHADES[Math.round((k / (b - a)) * scale)];
    }
    for (let y = 0, y0 = l * (rowH + gap); y < rowH; y++) px.set(row, (y0 + y) * W);
  }
  ctx.putImageData(img, 0, top);
}
