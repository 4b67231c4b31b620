/* Reference quantizers: float32 rows -> ggml Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 blocks, and float32 -> FP16.
 *
 * The rounding follows ggml's quantize_row_*_ref exactly (the functions
 * rwkv.cpp's quantizer calls through ggml_quantize_chunk), so the bytes match
 * files made by rwkv.cpp:
 *   - symmetric types (Q4_0, Q5_0): "max" is the signed value of the first
 *     element of largest magnitude; d = max / -8 (or -16), so that element maps
 *     to q = 0; q = min(qmax, trunc(x * (1/d) + 8.5)) (or + 16.5);
 *   - affine types (Q4_1, Q5_1): d = (max - min) / 15 (or 31), m = min,
 *     q = trunc((x - min) * (1/d) + 0.5); Q4_1 clamps to 15, Q5_1 needs no clamp;
 *   - Q8_0: d = amax / 127, q = roundf(x * (1/d)) (half away from zero);
 *   - always multiply by the reciprocal 1/d (not divide by d), 1/d := 0 when d == 0;
 *   - d and m are stored as fp16, rounded to nearest even.
 * Every float operation is a separate IEEE single-precision step: FMA
 * contraction would change roundings, so it is disabled (GCC: -std=c11 implies
 * -ffp-contract=off; clang: the pragma below).
 *
 * A float -> int conversion of a non-finite value (possible only when 1/d
 * overflows, i.e. for rows of magnitude below ~1e-37) yields 0, as x86 does.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../blocks.h"
#include "quantize.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* trunc(v) as an int, or 0 when v is not finite or outside the int32 range. */
static int32_t rwkvx_trunc_or_zero(float v) {
    if (!(fabsf(v) < 2147483648.0f)) return 0;
    return (int32_t)v;
}

static int32_t rwkvx_min_i32(int32_t a, int32_t b) { return a < b ? a : b; }

static float rwkvx_reciprocal_or_zero(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

/* The signed value of the first element with the largest |x| (+0 if all are zero). */
static float rwkvx_signed_absmax(const float *x) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < RWKVX_QK; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

/* Smallest and largest element, each the first one seen (matters only for ±0). */
static void rwkvx_min_max(const float *x, float *min_out, float *max_out) {
    float min = 3.402823466e+38f, max = -3.402823466e+38f;
    for (int j = 0; j < RWKVX_QK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    *min_out = min;
    *max_out = max;
}

/* Element j < 16 goes to the low nibble of qs[j], element j + 16 to its high nibble. */
static void rwkvx_pack_nibbles(const uint8_t q[RWKVX_QK], uint8_t qs[RWKVX_QK / 2]) {
    for (int j = 0; j < RWKVX_QK / 2; j++)
        qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + RWKVX_QK / 2] & 0x0f) << 4));
}

/* Bit j of the little-endian 32-bit qh is bit 4 of element j. */
static void rwkvx_pack_fifth_bits(const uint8_t q[RWKVX_QK], uint8_t qh[4]) {
    uint32_t bits = 0;
    for (int j = 0; j < RWKVX_QK; j++) bits |= (uint32_t)((q[j] >> 4) & 1u) << j;
    for (int b = 0; b < 4; b++) qh[b] = (uint8_t)(bits >> (8 * b));
}

/* Codes of a symmetric type with q in [0, 2*half_range): d = max / -half_range,
 * q = min(2*half_range - 1, trunc(x * (1/d) + half_range + 0.5)); returns d. */
static float rwkvx_symmetric_codes(const float *x, int32_t half_range, uint8_t q[RWKVX_QK]) {
    const float d = rwkvx_signed_absmax(x) / (float)-half_range;
    const float id = rwkvx_reciprocal_or_zero(d);
    const float offset = (float)half_range + 0.5f;
    for (int j = 0; j < RWKVX_QK; j++)
        q[j] = (uint8_t)rwkvx_min_i32(2 * half_range - 1, rwkvx_trunc_or_zero(x[j] * id + offset));
    return d;
}

/* q = trunc((x - min)/d + 0.5) with d = (max - min) / qmax; returns d, sets *min_out. */
static float rwkvx_affine_codes(const float *x, int32_t qmax, uint8_t q[RWKVX_QK], float *min_out) {
    float min, max;
    rwkvx_min_max(x, &min, &max);
    const float d = (max - min) / (float)qmax;
    const float id = rwkvx_reciprocal_or_zero(d);
    for (int j = 0; j < RWKVX_QK; j++)
        q[j] = (uint8_t)rwkvx_min_i32(qmax, rwkvx_trunc_or_zero((x[j] - min) * id + 0.5f));
    *min_out = min;
    return d;
}

void rwkvx_quantize_row_q4_0_ref(const float *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n / RWKVX_QK; i++) {
        uint8_t q[RWKVX_QK];
        rwkvx_block_q4_0 b;
        b.d = rwkvx_float_to_half(rwkvx_symmetric_codes(src + i * RWKVX_QK, 8, q));
        rwkvx_pack_nibbles(q, b.qs);
        memcpy(dst + i * sizeof b, &b, sizeof b);
    }
}

void rwkvx_quantize_row_q5_0_ref(const float *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n / RWKVX_QK; i++) {
        uint8_t q[RWKVX_QK];
        rwkvx_block_q5_0 b;
        b.d = rwkvx_float_to_half(rwkvx_symmetric_codes(src + i * RWKVX_QK, 16, q));
        rwkvx_pack_fifth_bits(q, b.qh);
        rwkvx_pack_nibbles(q, b.qs);
        memcpy(dst + i * sizeof b, &b, sizeof b);
    }
}

void rwkvx_quantize_row_q4_1_ref(const float *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n / RWKVX_QK; i++) {
        uint8_t q[RWKVX_QK];
        rwkvx_block_q4_1 b;
        float min;
        b.d = rwkvx_float_to_half(rwkvx_affine_codes(src + i * RWKVX_QK, 15, q, &min));
        b.m = rwkvx_float_to_half(min);
        rwkvx_pack_nibbles(q, b.qs);
        memcpy(dst + i * sizeof b, &b, sizeof b);
    }
}

void rwkvx_quantize_row_q5_1_ref(const float *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n / RWKVX_QK; i++) {
        uint8_t q[RWKVX_QK];
        rwkvx_block_q5_1 b;
        float min;
        /* ggml does not clamp Q5_1 codes; (max - min) * (1/d) + 0.5 stays below 32
         * for finite inputs, so the clamp to 31 here never changes a result. */
        b.d = rwkvx_float_to_half(rwkvx_affine_codes(src + i * RWKVX_QK, 31, q, &min));
        b.m = rwkvx_float_to_half(min);
        rwkvx_pack_fifth_bits(q, b.qh);
        rwkvx_pack_nibbles(q, b.qs);
        memcpy(dst + i * sizeof b, &b, sizeof b);
    }
}

void rwkvx_quantize_row_q8_0_ref(const float *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n / RWKVX_QK; i++) {
        const float *x = src + i * RWKVX_QK;
        float amax = 0.0f;
        for (int j = 0; j < RWKVX_QK; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 127.0f;
        const float id = rwkvx_reciprocal_or_zero(d);
        rwkvx_block_q8_0 b;
        b.d = rwkvx_float_to_half(d);
        for (int j = 0; j < RWKVX_QK; j++) b.qs[j] = (int8_t)rwkvx_trunc_or_zero(roundf(x[j] * id));
        memcpy(dst + i * sizeof b, &b, sizeof b);
    }
}

void rwkvx_convert_row_f16_ref(const float *src, uint8_t *dst, size_t n) {
    for (size_t j = 0; j < n; j++) {
        const rwkvx_half h = rwkvx_float_to_half(src[j]);
        dst[2 * j] = (uint8_t)(h & 0xffu); /* little-endian, whatever the host */
        dst[2 * j + 1] = (uint8_t)(h >> 8);
    }
}

size_t rwkvx_quantize_rows_ref(int type, const float *src, size_t n_rows, size_t n_per_row, uint8_t *dst) {
    void (*row_fn)(const float *, uint8_t *, size_t);
    switch (type) {
    case RWKVX_TYPE_F32:
        memcpy(dst, src, n_rows * n_per_row * sizeof(float));
        return n_rows * n_per_row * sizeof(float);
    case RWKVX_TYPE_F16: row_fn = rwkvx_convert_row_f16_ref; break;
    case RWKVX_TYPE_Q4_0: row_fn = rwkvx_quantize_row_q4_0_ref; break;
    case RWKVX_TYPE_Q4_1: row_fn = rwkvx_quantize_row_q4_1_ref; break;
    case RWKVX_TYPE_Q5_0: row_fn = rwkvx_quantize_row_q5_0_ref; break;
    case RWKVX_TYPE_Q5_1: row_fn = rwkvx_quantize_row_q5_1_ref; break;
    case RWKVX_TYPE_Q8_0: row_fn = rwkvx_quantize_row_q8_0_ref; break;
    default: return 0;
    }
    if (n_per_row % (size_t)rwkvx_type_block_size(type) != 0) return 0;
    const size_t row_bytes = rwkvx_row_bytes(type, n_per_row);
    for (size_t r = 0; r < n_rows; r++) row_fn(src + r * n_per_row, dst + r * row_bytes, n_per_row);
    return n_rows * row_bytes;
}
