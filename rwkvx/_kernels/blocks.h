/* Weight types and ggml block layouts, defined once for C and CUDA.
 *
 * A quantized row of n weights is n/32 blocks stored back to back. These are
 * ggml's layouts (rwkv.cpp file version 101) byte for byte, so files written
 * by either project load in the other. Blocks sit at arbitrary byte offsets in
 * a memory-mapped file (the format has no padding), so kernels copy a block
 * into a local struct (memcpy, which compilers turn into unaligned loads)
 * instead of dereferencing a possibly misaligned struct pointer.
 *
 * Compiled by nvcc, every helper here is __host__ __device__: the CPU tests
 * exercise the same dequantization code the GPU runs.
 */
#ifndef RWKVX_BLOCKS_H
#define RWKVX_BLOCKS_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define RWKVX_HD static __host__ __device__ __forceinline__
#define RWKVX_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define RWKVX_HD static inline
#define RWKVX_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* Type ids as stored in rwkv.cpp files (enum rwkv_type / ggml_type). */
enum rwkvx_type {
    RWKVX_TYPE_F32 = 0,
    RWKVX_TYPE_F16 = 1,
    RWKVX_TYPE_Q4_0 = 2,
    RWKVX_TYPE_Q4_1 = 3,
    RWKVX_TYPE_Q5_0 = 7,
    RWKVX_TYPE_Q5_1 = 8,
    RWKVX_TYPE_Q8_0 = 9,
};

#define RWKVX_QK 32 /* weights per quantization block */

typedef uint16_t rwkvx_half; /* IEEE 754 binary16, stored as raw bits */

typedef struct { rwkvx_half d; uint8_t qs[RWKVX_QK / 2]; } rwkvx_block_q4_0;
typedef struct { rwkvx_half d, m; uint8_t qs[RWKVX_QK / 2]; } rwkvx_block_q4_1;
typedef struct { rwkvx_half d; uint8_t qh[4]; uint8_t qs[RWKVX_QK / 2]; } rwkvx_block_q5_0;
typedef struct { rwkvx_half d, m; uint8_t qh[4]; uint8_t qs[RWKVX_QK / 2]; } rwkvx_block_q5_1;
typedef struct { rwkvx_half d; int8_t qs[RWKVX_QK]; } rwkvx_block_q8_0;

RWKVX_STATIC_ASSERT(sizeof(rwkvx_block_q4_0) == 18, "Q4_0 block is 18 bytes");
RWKVX_STATIC_ASSERT(sizeof(rwkvx_block_q4_1) == 20, "Q4_1 block is 20 bytes");
RWKVX_STATIC_ASSERT(sizeof(rwkvx_block_q5_0) == 22, "Q5_0 block is 22 bytes");
RWKVX_STATIC_ASSERT(sizeof(rwkvx_block_q5_1) == 24, "Q5_1 block is 24 bytes");
RWKVX_STATIC_ASSERT(sizeof(rwkvx_block_q8_0) == 34, "Q8_0 block is 34 bytes");

/* Bytes taken by a row of n weights (n a multiple of the block size). */
RWKVX_HD size_t rwkvx_row_bytes(int type, size_t n) {
    switch (type) {
    case RWKVX_TYPE_F32: return n * 4;
    case RWKVX_TYPE_F16: return n * 2;
    case RWKVX_TYPE_Q4_0: return n / RWKVX_QK * sizeof(rwkvx_block_q4_0);
    case RWKVX_TYPE_Q4_1: return n / RWKVX_QK * sizeof(rwkvx_block_q4_1);
    case RWKVX_TYPE_Q5_0: return n / RWKVX_QK * sizeof(rwkvx_block_q5_0);
    case RWKVX_TYPE_Q5_1: return n / RWKVX_QK * sizeof(rwkvx_block_q5_1);
    case RWKVX_TYPE_Q8_0: return n / RWKVX_QK * sizeof(rwkvx_block_q8_0);
    default: return 0;
    }
}

RWKVX_HD int rwkvx_type_block_size(int type) {
    return (type == RWKVX_TYPE_F32 || type == RWKVX_TYPE_F16) ? 1 : RWKVX_QK;
}

/* binary16 -> binary32, exact for every input (normals, subnormals, inf, NaN). */
RWKVX_HD float rwkvx_half_to_float(rwkvx_half h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu) {            /* inf / NaN */
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {         /* normal */
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {         /* signed zero */
        bits = sign;
    } else {                            /* subnormal: renormalize */
        exponent = 113u;
        while ((mantissa & 0x400u) == 0) { mantissa <<= 1; exponent--; }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* binary32 -> binary16, round to nearest even (as numpy and F16C do). */
RWKVX_HD rwkvx_half rwkvx_float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) /* inf or NaN (keep NaN quiet and non-zero) */
        return (rwkvx_half)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u | ((abs >> 13) & 0x3ffu) : 0u));
    if (abs >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (rwkvx_half)(sign | 0x7c00u);
    if (abs < 0x38800000u) { /* result is subnormal or zero */
        if (abs < 0x33000000u) return (rwkvx_half)sign; /* < 2^-25: rounds to zero */
        uint32_t shift = 126u - (abs >> 23);            /* 14..24 */
        uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        uint32_t half_mant = mant >> shift;
        uint32_t rest = mant & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1u);
        if (rest > halfway || (rest == halfway && (half_mant & 1u))) half_mant++;
        return (rwkvx_half)(sign | half_mant);
    }
    uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u) - 0x38000000u;
    return (rwkvx_half)(sign | (rounded >> 13));
}

/* Load a binary16 value from a possibly misaligned address. */
RWKVX_HD rwkvx_half rwkvx_load_half(const void *p) {
    rwkvx_half h;
    memcpy(&h, p, sizeof h);
    return h;
}

/* Per-block dequantization: 32 floats out, exactly d*q (+ m) in float32. */

RWKVX_HD void rwkvx_dequant_block_q4_0(const void *src, float *out) {
    rwkvx_block_q4_0 b;
    memcpy(&b, src, sizeof b);
    const float d = rwkvx_half_to_float(b.d);
    for (int j = 0; j < RWKVX_QK / 2; j++) {
        out[j] = d * (float)((int)(b.qs[j] & 0x0f) - 8);
        out[j + RWKVX_QK / 2] = d * (float)((int)(b.qs[j] >> 4) - 8);
    }
}

RWKVX_HD void rwkvx_dequant_block_q4_1(const void *src, float *out) {
    rwkvx_block_q4_1 b;
    memcpy(&b, src, sizeof b);
    const float d = rwkvx_half_to_float(b.d), m = rwkvx_half_to_float(b.m);
    for (int j = 0; j < RWKVX_QK / 2; j++) {
        out[j] = d * (float)(b.qs[j] & 0x0f) + m;
        out[j + RWKVX_QK / 2] = d * (float)(b.qs[j] >> 4) + m;
    }
}

/* The fifth bit of element j is bit j of the little-endian 32-bit qh. */
RWKVX_HD uint32_t rwkvx_load_qh(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) | ((uint32_t)qh[3] << 24);
}

RWKVX_HD void rwkvx_dequant_block_q5_0(const void *src, float *out) {
    rwkvx_block_q5_0 b;
    memcpy(&b, src, sizeof b);
    const float d = rwkvx_half_to_float(b.d);
    const uint32_t qh = rwkvx_load_qh(b.qh);
    for (int j = 0; j < RWKVX_QK / 2; j++) {
        const int lo = (b.qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
        const int hi = (b.qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        out[j] = d * (float)(lo - 16);
        out[j + RWKVX_QK / 2] = d * (float)(hi - 16);
    }
}

RWKVX_HD void rwkvx_dequant_block_q5_1(const void *src, float *out) {
    rwkvx_block_q5_1 b;
    memcpy(&b, src, sizeof b);
    const float d = rwkvx_half_to_float(b.d), m = rwkvx_half_to_float(b.m);
    const uint32_t qh = rwkvx_load_qh(b.qh);
    for (int j = 0; j < RWKVX_QK / 2; j++) {
        const int lo = (b.qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
        const int hi = (b.qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        out[j] = d * (float)lo + m;
        out[j + RWKVX_QK / 2] = d * (float)hi + m;
    }
}

RWKVX_HD void rwkvx_dequant_block_q8_0(const void *src, float *out) {
    rwkvx_block_q8_0 b;
    memcpy(&b, src, sizeof b);
    const float d = rwkvx_half_to_float(b.d);
    for (int j = 0; j < RWKVX_QK; j++) out[j] = d * (float)b.qs[j];
}

/* Block `index` of a row of a quantized type, dequantized: the one place that maps a type id to its
 * decoder (a constant type folds the switch away, as in the CUDA templates). */
RWKVX_HD void rwkvx_dequant_block(int type, const void *row, size_t index, float *out) {
    const uint8_t *p = (const uint8_t *)row;
    switch (type) {
    case RWKVX_TYPE_Q4_0: rwkvx_dequant_block_q4_0(p + index * sizeof(rwkvx_block_q4_0), out); return;
    case RWKVX_TYPE_Q4_1: rwkvx_dequant_block_q4_1(p + index * sizeof(rwkvx_block_q4_1), out); return;
    case RWKVX_TYPE_Q5_0: rwkvx_dequant_block_q5_0(p + index * sizeof(rwkvx_block_q5_0), out); return;
    case RWKVX_TYPE_Q5_1: rwkvx_dequant_block_q5_1(p + index * sizeof(rwkvx_block_q5_1), out); return;
    case RWKVX_TYPE_Q8_0: rwkvx_dequant_block_q8_0(p + index * sizeof(rwkvx_block_q8_0), out); return;
    default: return;
    }
}

#endif /* RWKVX_BLOCKS_H */
