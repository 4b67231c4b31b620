/* AVX2 (+ FMA, F16C) matrix products for every weight type.
 *
 * Same contract and structure as matmul_avx512.c: each 32-weight block is
 * decoded into four 8-float vectors holding exactly the reference's
 * dequantized values, then multiplied into float32 activations (never
 * quantized). Four accumulators per token, a zero-padded partial block for
 * F32/F16 rows whose length is not a multiple of 32, one fixed reduction:
 * every output element is computed the same way whatever the token count.
 * Tiles of TOKEN_TILE tokens share each decoded block (16 ymm registers allow 2).
 * All loads are unaligned (weights sit at arbitrary offsets in the mmap).
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define TOKEN_TILE 2
#define FORCE_INLINE static inline __attribute__((always_inline))

FORCE_INLINE size_t block_bytes(int type) {
    return type == RWKVX_TYPE_F32 ? 128 : type == RWKVX_TYPE_F16 ? 64 : rwkvx_row_bytes(type, RWKVX_QK);
}

FORCE_INLINE float load_half_f32(const uint8_t *p) { return _cvtsh_ss(rwkvx_load_half(p)); }

/* 8 bytes at p as int32 lanes, signed or unsigned. */
FORCE_INLINE __m256i widen_i8(const uint8_t *p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); }

/* The 32 nibbles of 16 bytes in element order: low nibbles are elements 0-15, high ones 16-31. */
FORCE_INLINE void nibbles(__m128i qs, __m256i q[4]) {
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(qs, mask), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
    q[0] = _mm256_cvtepu8_epi32(lo);
    q[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    q[2] = _mm256_cvtepu8_epi32(hi);
    q[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
}

/* Add 16 to the lanes of q[k] (elements 8k..8k+7) whose bit is set in qh: INT5's fifth bit. */
FORCE_INLINE void add_high_bits(__m256i q[4], uint32_t qh) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i sixteen = _mm256_set1_epi32(16);
    for (int k = 0; k < 4; k++) {
        const __m256i bits = _mm256_and_si256(_mm256_set1_epi32((int32_t)((qh >> (8 * k)) & 0xffu)), lane_bit);
        const __m256i set = _mm256_cmpeq_epi32(bits, lane_bit);
        q[k] = _mm256_add_epi32(q[k], _mm256_and_si256(set, sixteen));
    }
}

/* w[k] = d * (q[k] - offset) (+ m): the reference's rounding, multiply then add. */
FORCE_INLINE void scale(const __m256i q[4], int32_t offset, float d, const float *m, __m256 w[4]) {
    const __m256 vd = _mm256_set1_ps(d);
    const __m256i voff = _mm256_set1_epi32(offset);
    for (int k = 0; k < 4; k++) {
        w[k] = _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[k], voff)));
        if (m != NULL) w[k] = _mm256_add_ps(w[k], _mm256_set1_ps(*m));
    }
}

/* Decode one block at p into w[0..3] (elements 0-7, 8-15, 16-23, 24-31). */
FORCE_INLINE void decode_block(int type, const uint8_t *p, __m256 w[4]) {
    __m256i q[4];
    uint32_t qh;
    float m;
    switch (type) {
    case RWKVX_TYPE_F32:
        for (int k = 0; k < 4; k++) w[k] = _mm256_loadu_ps((const float *)p + 8 * k);
        return;
    case RWKVX_TYPE_F16:
        for (int k = 0; k < 4; k++) w[k] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * k)));
        return;
    case RWKVX_TYPE_Q8_0:
        for (int k = 0; k < 4; k++) q[k] = widen_i8(p + 2 + 8 * k);
        scale(q, 0, load_half_f32(p), NULL, w);
        return;
    case RWKVX_TYPE_Q4_0:
        nibbles(_mm_loadu_si128((const __m128i *)(p + 2)), q);
        scale(q, 8, load_half_f32(p), NULL, w);
        return;
    case RWKVX_TYPE_Q4_1:
        nibbles(_mm_loadu_si128((const __m128i *)(p + 4)), q);
        m = load_half_f32(p + 2);
        scale(q, 0, load_half_f32(p), &m, w);
        return;
    case RWKVX_TYPE_Q5_0:
        memcpy(&qh, p + 2, 4); /* little-endian, as rwkvx_load_qh reads it */
        nibbles(_mm_loadu_si128((const __m128i *)(p + 6)), q);
        add_high_bits(q, qh);
        scale(q, 16, load_half_f32(p), NULL, w);
        return;
    case RWKVX_TYPE_Q5_1:
        memcpy(&qh, p + 4, 4);
        nibbles(_mm_loadu_si128((const __m128i *)(p + 8)), q);
        add_high_bits(q, qh);
        m = load_half_f32(p + 2);
        scale(q, 0, load_half_f32(p), &m, w);
        return;
    }
}

FORCE_INLINE float reduce8(__m256 v) {
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* out[t] = row . x[t] for nt <= TOKEN_TILE tokens (x rows ldx floats apart). */
FORCE_INLINE void dot_tile(int type, const uint8_t *row, int64_t n, const float *x, int64_t ldx, int nt,
                           float *out) {
    const size_t bb = block_bytes(type);
    const int64_t n_blocks = n / RWKVX_QK;
    __m256 acc[TOKEN_TILE][4];
    for (int t = 0; t < nt; t++)
        for (int k = 0; k < 4; k++) acc[t][k] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        __m256 w[4];
        decode_block(type, row + b * bb, w);
        for (int t = 0; t < nt; t++) {
            const float *xt = x + t * ldx + b * RWKVX_QK;
            for (int k = 0; k < 4; k++) acc[t][k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xt + 8 * k), acc[t][k]);
        }
    }
    /* F32/F16 rows may end in a partial block: decode it from a zero-padded copy. */
    const int64_t rest = (type == RWKVX_TYPE_F32 || type == RWKVX_TYPE_F16) ? n - n_blocks * RWKVX_QK : 0;
    if (rest > 0) {
        uint8_t padded[128] = {0};
        memcpy(padded, row + n_blocks * bb, (size_t)rest * (type == RWKVX_TYPE_F32 ? 4 : 2));
        __m256 w[4];
        decode_block(type, padded, w);
        for (int t = 0; t < nt; t++) {
            float xpad[RWKVX_QK] = {0};
            memcpy(xpad, x + t * ldx + n_blocks * RWKVX_QK, (size_t)rest * sizeof(float));
            for (int k = 0; k < 4; k++) acc[t][k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xpad + 8 * k), acc[t][k]);
        }
    }
    for (int t = 0; t < nt; t++)
        out[t] = reduce8(_mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][2]), _mm256_add_ps(acc[t][1], acc[t][3])));
}

FORCE_INLINE void matmul_typed(int type, const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t n_tokens,
                               float *y, int64_t ldy) {
    const int64_t n = w->n_in;
    const size_t rb = rwkvx_row_bytes(type, (size_t)n);
    for (int64_t o = 0; o < w->n_rows; o++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)o * rb;
        for (int64_t t0 = 0; t0 < n_tokens; t0 += TOKEN_TILE) {
            const float *xt = x + t0 * ldx;
            float out[TOKEN_TILE];
            const int nt = n_tokens - t0 >= TOKEN_TILE ? TOKEN_TILE : (int)(n_tokens - t0);
            if (nt == 2)
                dot_tile(type, row, n, xt, ldx, 2, out); /* constant tile: accumulators in registers */
            else
                dot_tile(type, row, n, xt, ldx, 1, out);
            for (int t = 0; t < nt; t++) y[(t0 + t) * ldy + o] = out[t];
        }
    }
}

void rwkvx_matmul_avx2(const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t n_tokens, float *y,
                       int64_t ldy) {
    switch (w->type) {
    case RWKVX_TYPE_F32: matmul_typed(RWKVX_TYPE_F32, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_F16: matmul_typed(RWKVX_TYPE_F16, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q8_0: matmul_typed(RWKVX_TYPE_Q8_0, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q5_1: matmul_typed(RWKVX_TYPE_Q5_1, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q5_0: matmul_typed(RWKVX_TYPE_Q5_0, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q4_1: matmul_typed(RWKVX_TYPE_Q4_1, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q4_0: matmul_typed(RWKVX_TYPE_Q4_0, w, x, ldx, n_tokens, y, ldy); return;
    default: rwkvx_matmul_ref(w, x, ldx, n_tokens, y, ldy); return; /* unknown types never reach here */
    }
}
