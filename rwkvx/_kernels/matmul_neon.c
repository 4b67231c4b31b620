/* NEON (baseline ARMv8-A Advanced SIMD) matrix products for every weight type.
 *
 * Same contract as rwkvx_matmul_ref, in its two halves:
 *
 * F32/F16 (float activations): as in matmul_avx2.c, each 32-weight block is
 * decoded into eight 4-float vectors and multiplied into the activations with
 * four accumulators per token, a zero-padded partial block for rows whose
 * length is not a multiple of 32, and one fixed reduction.
 *
 * Quantized types (activations quantized per block by act_quant.c): block dots
 * of signed weight codes and activation quants are exact integers (SMULL into
 * int16, SADALP into int32), then combined exactly as rwkvx_matmul_q8_ref does,
 * (float)isum * (d_w * d_x) and + m_w * s_x, each a separate IEEE multiply and
 * add (setup.py's -std=c11 keeps the compiler from fusing them), in block order.
 * The float work runs with tokens in vector lanes, so each lane repeats the
 * reference's scalar sequence: results equal the scalar reference bit for bit.
 *
 * Either way every output element is computed by the same operations whatever
 * the token count. Only baseline instructions are used (no dotprod, no fp16
 * arithmetic; FCVTL for half -> float), so ASIMD in HWCAP is all the dispatcher
 * checks. Weights sit at arbitrary byte offsets in the mmap: weight loads go
 * through byte pointers (vld1q_u8), which AArch64 allows unaligned.
 */
#include <arm_neon.h>
#include <string.h>

#include "kernels.h"

#define TOKEN_TILE 4    /* F32/F16: tokens sharing each decoded block */
#define Q_TOKEN_LANES 4 /* quantized: tokens in the lanes of one float32x4 */
#define FORCE_INLINE static inline __attribute__((always_inline))

/* Bytes holding 32 F32 or F16 weights. */
FORCE_INLINE size_t block_bytes(int type) { return type == RWKVX_TYPE_F32 ? 128 : 64; }

FORCE_INLINE float load_half_f32(const uint8_t *p) { return rwkvx_half_to_float(rwkvx_load_half(p)); }

/* Four floats from a possibly misaligned address. */
FORCE_INLINE float32x4_t load_f32x4(const uint8_t *p) { return vreinterpretq_f32_u8(vld1q_u8(p)); }

/* Four binary16 values at p widened exactly to float (FCVTL handles subnormals). */
FORCE_INLINE float32x4_t load_f16x4(const uint8_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p)));
}

/* Decode one F32/F16 block at p into w[0..7] (elements 4k..4k+3 in w[k]). */
FORCE_INLINE void decode_float_block(int type, const uint8_t *p, float32x4_t w[8]) {
    switch (type) {
    case RWKVX_TYPE_F32:
        for (int k = 0; k < 8; k++) w[k] = load_f32x4(p + 16 * k);
        return;
    case RWKVX_TYPE_F16:
        for (int k = 0; k < 8; k++) w[k] = load_f16x4(p + 8 * k);
        return;
    }
}

/* acc[0..3] += w[0..7] * x[0..31]: element 4k..4k+3 goes to accumulator k % 4. */
FORCE_INLINE void accumulate(const float32x4_t w[8], const float *x, float32x4_t acc[4]) {
    for (int k = 0; k < 8; k++) acc[k % 4] = vfmaq_f32(acc[k % 4], w[k], vld1q_f32(x + 4 * k));
}

/* out[t] = row . x[t] for nt <= TOKEN_TILE tokens (x rows ldx floats apart). */
FORCE_INLINE void dot_tile(int type, const uint8_t *row, int64_t n, const float *x, int64_t ldx, int nt,
                           float *out) {
    const size_t bb = block_bytes(type);
    const int64_t n_blocks = n / RWKVX_QK;
    float32x4_t acc[TOKEN_TILE][4];
    for (int t = 0; t < nt; t++)
        for (int k = 0; k < 4; k++) acc[t][k] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < n_blocks; b++) {
        float32x4_t w[8];
        decode_float_block(type, row + b * bb, w);
        for (int t = 0; t < nt; t++) accumulate(w, x + t * ldx + b * RWKVX_QK, acc[t]);
    }
    /* F32/F16 rows may end in a partial block: decode it from a zero-padded copy. */
    const int64_t rest = (type == RWKVX_TYPE_F32 || type == RWKVX_TYPE_F16) ? n - n_blocks * RWKVX_QK : 0;
    if (rest > 0) {
        uint8_t padded[128] = {0};
        memcpy(padded, row + n_blocks * bb, (size_t)rest * (type == RWKVX_TYPE_F32 ? 4 : 2));
        float32x4_t w[8];
        decode_float_block(type, padded, w);
        for (int t = 0; t < nt; t++) {
            float xpad[RWKVX_QK] = {0};
            memcpy(xpad, x + t * ldx + n_blocks * RWKVX_QK, (size_t)rest * sizeof(float));
            accumulate(w, xpad, acc[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        out[t] = vaddvq_f32(vaddq_f32(vaddq_f32(acc[t][0], acc[t][2]), vaddq_f32(acc[t][1], acc[t][3])));
}

FORCE_INLINE void matmul_float_typed(int type, const rwkvx_tensor *w, const float *x, int64_t ldx,
                                     int64_t n_tokens, float *y, int64_t ldy) {
    const int64_t n = w->n_in;
    const size_t rb = rwkvx_row_bytes(type, (size_t)n);
    for (int64_t o = 0; o < w->n_rows; o++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)o * rb;
        int64_t t0 = 0;
        for (; t0 + TOKEN_TILE <= n_tokens; t0 += TOKEN_TILE) {
            float out[TOKEN_TILE];
            dot_tile(type, row, n, x + t0 * ldx, ldx, TOKEN_TILE, out); /* constant tile: registers */
            for (int t = 0; t < TOKEN_TILE; t++) y[(t0 + t) * ldy + o] = out[t];
        }
        for (; t0 < n_tokens; t0++) dot_tile(type, row, n, x + t0 * ldx, ldx, 1, &y[t0 * ldy + o]);
    }
}

/* ---- integer products for quantized weights ------------------------------------ */

/* 0x10 in byte j where bit j of the 16-bit mask is set: INT5's fifth bit for 16 elements. */
FORCE_INLINE uint8x16_t high_bits(uint32_t bits16) {
    static const uint8_t lane_bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t spread = vcombine_u8(vdup_n_u8((uint8_t)(bits16 & 0xffu)), vdup_n_u8((uint8_t)(bits16 >> 8)));
    return vandq_u8(vtstq_u8(spread, vld1q_u8(lane_bit)), vdupq_n_u8(0x10));
}

/* Integer codes of one block: q[0] = elements 0-15, q[1] = 16-31, minus offset (all fit in int8). */
FORCE_INLINE void nibble_codes(const uint8_t *qs, const uint32_t *qh, int offset, int8x16_t q[2]) {
    const uint8x16_t bytes = vld1q_u8(qs);
    uint8x16_t lo = vandq_u8(bytes, vdupq_n_u8(0x0f)), hi = vshrq_n_u8(bytes, 4);
    if (qh != NULL) {
        lo = vorrq_u8(lo, high_bits(*qh & 0xffffu));
        hi = vorrq_u8(hi, high_bits(*qh >> 16));
    }
    q[0] = vsubq_s8(vreinterpretq_s8_u8(lo), vdupq_n_s8((int8_t)offset));
    q[1] = vsubq_s8(vreinterpretq_s8_u8(hi), vdupq_n_s8((int8_t)offset));
}

/* Signed codes of block p (weight = d * q (+ m)): q[0] = elements 0-15, q[1] = 16-31. */
FORCE_INLINE void block_codes(int type, const uint8_t *p, int8x16_t q[2], float *d, float *m) {
    uint32_t qh;
    *d = load_half_f32(p);
    *m = 0.0f;
    switch (type) {
    case RWKVX_TYPE_Q8_0:
        q[0] = vreinterpretq_s8_u8(vld1q_u8(p + 2));
        q[1] = vreinterpretq_s8_u8(vld1q_u8(p + 18));
        return;
    case RWKVX_TYPE_Q4_0: nibble_codes(p + 2, NULL, 8, q); return;
    case RWKVX_TYPE_Q4_1:
        *m = load_half_f32(p + 2);
        nibble_codes(p + 4, NULL, 0, q);
        return;
    case RWKVX_TYPE_Q5_0:
        qh = rwkvx_load_qh(p + 2);
        nibble_codes(p + 6, &qh, 16, q);
        return;
    case RWKVX_TYPE_Q5_1:
        *m = load_half_f32(p + 2);
        qh = rwkvx_load_qh(p + 4);
        nibble_codes(p + 8, &qh, 0, q);
        return;
    }
}

/* Four int32 lanes summing to the integer dot of a block's codes with 32 activation quants.
 * |q_w * q_x| <= 128 * 127 fits int16; SADALP widens pairs to int32 before adding. */
FORCE_INLINE int32x4_t block_dot_lanes(const int8x16_t q[2], const int8_t *qx) {
    const int8x16_t x0 = vld1q_s8(qx), x1 = vld1q_s8(qx + 16);
    int32x4_t acc = vpaddlq_s16(vmull_s8(vget_low_s8(q[0]), vget_low_s8(x0)));
    acc = vpadalq_s16(acc, vmull_high_s8(q[0], x0));
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(q[1]), vget_low_s8(x1)));
    return vpadalq_s16(acc, vmull_high_s8(q[1], x1));
}

/* y[t0 + t][o] for nt <= Q_TOKEN_LANES tokens, token t in lane t. Unused lanes see zero quants and scales;
 * their results are dropped, and a lane's arithmetic never depends on the others. */
FORCE_INLINE void q8_tile(int type, const uint8_t *row, const rwkvx_q8_acts *x, int64_t t0, int nt, float *y,
                          int64_t ldy, int64_t o) {
    const int has_m = type == RWKVX_TYPE_Q4_1 || type == RWKVX_TYPE_Q5_1;
    const size_t block = rwkvx_row_bytes(type, RWKVX_QK);
    const int64_t stride = x->stride_blocks;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < x->n_blocks; b++) {
        int8x16_t q[2];
        float d, m;
        block_codes(type, row + b * block, q, &d, &m);
        int32x4_t lanes[Q_TOKEN_LANES];
        float dx[Q_TOKEN_LANES] = {0.0f}, s[Q_TOKEN_LANES] = {0.0f};
        for (int t = 0; t < Q_TOKEN_LANES; t++) {
            if (t >= nt) {
                lanes[t] = vdupq_n_s32(0);
                continue;
            }
            const int64_t i = (t0 + t) * stride + b;
            lanes[t] = block_dot_lanes(q, x->qs + i * RWKVX_QK);
            dx[t] = x->dv[i];
            if (has_m) memcpy(&s[t], &x->aux[i], sizeof(float)); /* s's bits */
        }
        const int32x4_t isum = vpaddq_s32(vpaddq_s32(lanes[0], lanes[1]), vpaddq_s32(lanes[2], lanes[3]));
        /* as the reference: acc += (float)isum * (d_w * d_x); acc += m_w * s_x */
        acc = vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(isum), vmulq_f32(vdupq_n_f32(d), vld1q_f32(dx))));
        if (has_m) acc = vaddq_f32(acc, vmulq_f32(vdupq_n_f32(m), vld1q_f32(s)));
    }
    float out[Q_TOKEN_LANES];
    vst1q_f32(out, acc);
    for (int t = 0; t < nt; t++) y[(t0 + t) * ldy + o] = out[t];
}

FORCE_INLINE void q8_typed(int type, const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    const size_t rb = rwkvx_row_bytes(type, (size_t)w->n_in);
    for (int64_t o = 0; o < w->n_rows; o++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)o * rb;
        int64_t t0 = 0;
        for (; t0 + Q_TOKEN_LANES <= x->n_tokens; t0 += Q_TOKEN_LANES)
            q8_tile(type, row, x, t0, Q_TOKEN_LANES, y, ldy, o);
        if (t0 < x->n_tokens) q8_tile(type, row, x, t0, (int)(x->n_tokens - t0), y, ldy, o);
    }
}

void rwkvx_matmul_q8_neon(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    switch (w->type) {
    case RWKVX_TYPE_Q8_0: q8_typed(RWKVX_TYPE_Q8_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_1: q8_typed(RWKVX_TYPE_Q5_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_0: q8_typed(RWKVX_TYPE_Q5_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_1: q8_typed(RWKVX_TYPE_Q4_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_0: q8_typed(RWKVX_TYPE_Q4_0, w, x, y, ldy); return;
    default: rwkvx_matmul_q8_ref(w, x, y, ldy); return; /* F32/F16 never come here */
    }
}

void rwkvx_matmul_neon(const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t n_tokens, float *y,
                       int64_t ldy) {
    switch (w->type) {
    case RWKVX_TYPE_F32: matmul_float_typed(RWKVX_TYPE_F32, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_F16: matmul_float_typed(RWKVX_TYPE_F16, w, x, ldx, n_tokens, y, ldy); return;
    default: rwkvx_matmul_via_q8(rwkvx_matmul_q8_neon, w, x, ldx, n_tokens, y, ldy); return;
    }
}
