// KV Cache Lab: the model's weights, expanded from the GGUF's own blocks into fp16.
//
// The page downloads the weights as the GGUF holds them (Q4_1 for the layers' matrices,
// Q8_0 for the tied embedding: 98 MB) instead of the fp16 the ONNX graph reads (257 MB),
// and a second, throw-away instance of this module expands them into EXACTLY the fp16
// bytes the builder writes (builder/onnx_graph.py: gguf.quants.dequantize in float32,
// llama.cpp's q/k row permutation undone, q/k/v and gate/up fused, transposed to
// (in, out), then astype(float16)). The rounding is therefore pinned like every kernel
// here: one f32 multiply, then one f32 add (never fused), then round-to-nearest-even fp16.
//
// Block layouts (ggml, 32 values a block, values along the GGUF row = the matrix's "in"):
//   Q4_1: fp16 d, fp16 m, 16 bytes: value j = d * (qs[j] & 15) + m, value j + 16 =
//         d * (qs[j] >> 4) + m                                    (20 bytes / 32 values)
//   Q8_0: fp16 d, 32 int8: value j = qs[j] * d                    (34 bytes / 32 values)
//
// NumPy reference: builder/weights.py (gguf.quants, a library this project did not write);
// scalar C == SIMD C == reference, bit for bit (tests/wasm/test_wasm_weights.py).

#include "kernels.h"

#define GGML_Q4_1 3
#define GGML_Q8_0 8
#define QK 32 // values per block, both types

// ---------------------------------------------------------------------------------------
// One block -> 32 fp16 values
// ---------------------------------------------------------------------------------------

INLINE void q4_1_block_scalar(const uint8_t *b, uint16_t *h) {
    const float d = f16_to_f32(load16(b)), m = f16_to_f32(load16(b + 2));
    for (int j = 0; j < QK / 2; j++) {
        h[j] = f32_to_f16(d * (float)(b[4 + j] & 15) + m);
        h[j + QK / 2] = f32_to_f16(d * (float)(b[4 + j] >> 4) + m);
    }
}

INLINE void q8_0_block_scalar(const uint8_t *b, uint16_t *h) {
    const float d = f16_to_f32(load16(b));
    for (int j = 0; j < QK; j++) h[j] = f32_to_f16((float)(int8_t)b[2 + j] * d);
}

#ifdef __wasm_simd128__

// 8 f32 lanes (two v128) -> 8 fp16 at h
INLINE void store_f16x8(uint16_t *h, v128_t a, v128_t b) {
    wasm_v128_store(h, wasm_u16x8_narrow_i32x4(f16_from_f32x4(a), f16_from_f32x4(b))); // lanes <= 0xffff
}

static void q4_1_block_simd(const uint8_t *b, uint16_t *h) {
    const v128_t vd = F32(f16_to_f32(load16(b))), vm = F32(f16_to_f32(load16(b + 2)));
    const v128_t qs = wasm_v128_load(b + 4);
    const v128_t half[2] = {wasm_v128_and(qs, wasm_u8x16_splat(15)), wasm_u8x16_shr(qs, 4)};
    for (int s = 0; s < 2; s++) // values 16s .. 16s + 15; u8_expand4 multiplies, then adds
        for (int k = 0; k < 4; k += 2)
            store_f16x8(h + 16 * s + 4 * k, u8_expand4(half[s], k, vd, vm), u8_expand4(half[s], k + 1, vd, vm));
}

static void q8_0_block_simd(const uint8_t *b, uint16_t *h) {
    const v128_t vd = F32(f16_to_f32(load16(b)));
    for (int c = 0; c < QK; c += 16) {
        const v128_t q = wasm_v128_load(b + 2 + c);
        const v128_t w[2] = {wasm_i16x8_extend_low_i8x16(q), wasm_i16x8_extend_high_i8x16(q)};
        for (int k = 0; k < 2; k++) {
            v128_t lo = wasm_f32x4_mul(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_low_i16x8(w[k])), vd);
            v128_t hi = wasm_f32x4_mul(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_high_i16x8(w[k])), vd);
            store_f16x8(h + c + 8 * k, lo, hi);
        }
    }
}

#define Q4_1_BLOCK q4_1_block_simd
#define Q8_0_BLOCK q8_0_block_simd
#else
#define Q4_1_BLOCK q4_1_block_scalar
#define Q8_0_BLOCK q8_0_block_scalar
#endif

// ---------------------------------------------------------------------------------------
// A whole tensor
// ---------------------------------------------------------------------------------------

// Where source row r (an output of the linear layer) lands: llama.cpp's converter
// interleaves each head's q/k rows for its RoPE; the graph uses transformers' rotate-half,
// so row h*d + 2b + a goes back to h*d + a*d/2 + b (gguf_load.unpermute_rope_rows).
INLINE int32_t dest_row(int32_t r, int32_t rope_d) {
    if (!rope_d) return r;
    const int32_t rem = r % rope_d;
    return r - rem + (rem & 1) * (rope_d / 2) + rem / 2;
}

// ... and the inverse: the source row that lands on destination row rr.
INLINE int32_t source_row(int32_t rr, int32_t rope_d) {
    if (!rope_d) return rr;
    const int32_t rem = rr % rope_d, half = rope_d / 2;
    return rr - rem + 2 * (rem % half) + rem / half;
}

#define TILE 8 // destination rows (= output columns of the (in, out) matrix) per tile

// Column j of the tile (TILE values, one per destination row) to p[0 .. TILE).
#ifdef __wasm_simd128__
// tile (TILE, QK) -> QK stores of TILE contiguous halves, transposed 8 x 8 at a time with
// three rounds of interleaves (16-, 32-, then 64-bit lanes)
static void store_tile(const uint16_t tile[TILE][QK], uint16_t *dst, size_t ld) {
    for (int j0 = 0; j0 < QK; j0 += 8) {
        v128_t r[8], t[8], u[8];
        for (int i = 0; i < 8; i++) r[i] = wasm_v128_load(&tile[i][j0]);
        for (int i = 0; i < 8; i += 2) { // t[i], t[i+1]: rows i, i+1 interleaved (columns 0-3, 4-7)
            t[i / 2] = wasm_i16x8_shuffle(r[i], r[i + 1], 0, 8, 1, 9, 2, 10, 3, 11);
            t[4 + i / 2] = wasm_i16x8_shuffle(r[i], r[i + 1], 4, 12, 5, 13, 6, 14, 7, 15);
        }
        for (int i = 0; i < 2; i++) { // rows 0-3 (i = 0) and 4-7 (i = 1), columns in pairs
            u[4 * i + 0] = wasm_i32x4_shuffle(t[2 * i], t[2 * i + 1], 0, 4, 1, 5);     // columns 0, 1
            u[4 * i + 1] = wasm_i32x4_shuffle(t[2 * i], t[2 * i + 1], 2, 6, 3, 7);     // 2, 3
            u[4 * i + 2] = wasm_i32x4_shuffle(t[4 + 2 * i], t[5 + 2 * i], 0, 4, 1, 5); // 4, 5
            u[4 * i + 3] = wasm_i32x4_shuffle(t[4 + 2 * i], t[5 + 2 * i], 2, 6, 3, 7); // 6, 7
        }
        for (int c = 0; c < 4; c++) { // column 2c and 2c + 1: rows 0-3 from u[c], 4-7 from u[4 + c]
            wasm_v128_store(dst + (size_t)(j0 + 2 * c) * ld, wasm_i64x2_shuffle(u[c], u[4 + c], 0, 2));
            wasm_v128_store(dst + (size_t)(j0 + 2 * c + 1) * ld, wasm_i64x2_shuffle(u[c], u[4 + c], 1, 3));
        }
    }
}
#else
static void store_tile(const uint16_t tile[TILE][QK], uint16_t *dst, size_t ld) {
    for (int j = 0; j < QK; j++)
        for (int i = 0; i < TILE; i++) dst[(size_t)j * ld + i] = tile[i][j];
}
#endif

// Expand a GGUF tensor of `rows` x `cols` values (blocks along cols) into fp16 at dst.
//   transpose = 0: value (r, c) -> dst[row(r) * ld + col0 + c]    (the embedding, (vocab, hidden))
//   transpose = 1: value (r, c) -> dst[c * ld + col0 + row(r)]    (linear weights, stored (in, out)
//                  with q/k/v or gate/up side by side: col0 is this one's first column)
//   rope_d: 0, or the head_dim whose q/k row permutation to undo.
// Returns rows * cols, or KV_EINVAL (unknown type, cols not a multiple of 32, a layout
// that does not fit ld).
KV_EXPORT(kv_expand)
int32_t kv_expand(int32_t type, const uint8_t *src, int32_t rows, int32_t cols, uint16_t *dst, int32_t ld,
                  int32_t col0, int32_t rope_d, int32_t transpose) {
    const int32_t block_bytes = type == GGML_Q4_1 ? 20 : type == GGML_Q8_0 ? 34 : 0;
    if (!block_bytes || rows <= 0 || cols <= 0 || cols % QK || col0 < 0 || !src || !dst) return KV_EINVAL;
    if (rope_d && (rope_d < 0 || rope_d % 2 || rows % rope_d)) return KV_EINVAL;
    if (transpose ? (ld < col0 + rows) : (ld < col0 + cols)) return KV_EINVAL;
    if ((int64_t)rows * cols > INT32_MAX) return KV_EINVAL;

    const int32_t nb = cols / QK;
    const size_t row_bytes = (size_t)nb * block_bytes;
#define EXPAND_BLOCK(b, h) (type == GGML_Q4_1 ? Q4_1_BLOCK(b, h) : Q8_0_BLOCK(b, h))
    if (transpose && rows % TILE == 0) {
        // TILE destination rows at a time: each output row then gets TILE contiguous halves
        // per store instead of one 2-byte store a row apart (the writes dominate the cost)
        uint16_t tile[TILE][QK] __attribute__((aligned(16)));
        for (int32_t rr0 = 0; rr0 < rows; rr0 += TILE) {
            const uint8_t *row[TILE];
            for (int i = 0; i < TILE; i++) row[i] = src + (size_t)source_row(rr0 + i, rope_d) * row_bytes;
            for (int32_t k = 0; k < nb; k++) {
                for (int i = 0; i < TILE; i++) EXPAND_BLOCK(row[i] + (size_t)k * block_bytes, tile[i]);
                store_tile((const uint16_t(*)[QK])tile, dst + (size_t)(k * QK) * ld + col0 + rr0, (size_t)ld);
            }
        }
        return rows * cols;
    }
    uint16_t h[QK] __attribute__((aligned(16)));
    for (int32_t r = 0; r < rows; r++) {
        const int32_t rr = dest_row(r, rope_d);
        const uint8_t *b = src + (size_t)r * row_bytes;
        for (int32_t k = 0; k < nb; k++, b += block_bytes) {
            EXPAND_BLOCK(b, h);
            if (transpose) { // a column of the (in, out) matrix: strided stores
                uint16_t *p = dst + (size_t)(k * QK) * ld + col0 + rr;
                for (int j = 0; j < QK; j++) p[(size_t)j * ld] = h[j];
            } else {
                __builtin_memcpy(dst + (size_t)rr * ld + col0 + k * QK, h, sizeof h);
            }
        }
    }
#undef EXPAND_BLOCK
    return rows * cols;
}
