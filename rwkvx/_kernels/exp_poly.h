/* exp and sigmoid in plain C that compilers vectorize.
 *
 * libm's expf is a call per element, so a loop over a layer's 2048 channels
 * stays scalar: decoding v7 1.5B, the decay, learning-rate and value-residual
 * stretches took 40 us per layer, mostly in expf. These inline
 * versions use only arithmetic, comparisons and integer bit moves, so
 * `for (i...) y[i] = rwkvx_exp_poly(x[i])` becomes SIMD code at -O3 on every
 * target, with the same result in every lane and at every ISA level.
 *
 * exp(x) = 2^n * e^r, n = round(x / ln 2), |r| <= ln(2)/2, e^r by its degree-6
 * Taylor polynomial (truncation below 1.2e-7 relative). Within 3 ulp of
 * exp in double precision over the whole normal range (tests/test_exp_poly.py).
 * Outside it: +inf above 88.72, 0 below -87.33 (where true results are
 * subnormal), NaN stays NaN.
 */
#ifndef RWKVX_EXP_POLY_H
#define RWKVX_EXP_POLY_H

#include <stdint.h>
#include <string.h>

#define RWKVX_EXP_POLY_MAX 88.72283f  /* ln(FLT_MAX) */
#define RWKVX_EXP_POLY_MIN -87.33654f /* ln(FLT_MIN): smallest normal result */

static inline float rwkvx_exp_poly(float x) {
    /* reduce a clamped copy (so NaN and huge inputs never reach the integer part); patch below */
    float xc = x > RWKVX_EXP_POLY_MIN ? x : RWKVX_EXP_POLY_MIN;
    xc = xc < RWKVX_EXP_POLY_MAX ? xc : RWKVX_EXP_POLY_MAX;
    /* round to nearest integer by adding 1.5 * 2^23: the integer lands in the low mantissa bits */
    const float shifter = 12582912.0f;
    const float shifted = xc * 1.44269504f + shifter;
    int32_t shifted_bits;
    memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    const float n = shifted - shifter;
    /* r = xc - n ln 2 in two steps: ln2_hi has 9 significant bits, so n * ln2_hi is exact */
    const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^n with n in [-126, 128] as 2^half * 2^(n - half): each factor is a normal float */
    const int32_t n_int = shifted_bits - 0x4B400000, half = n_int / 2;
    const int32_t scale1_bits = (half + 127) * (1 << 23), scale2_bits = (n_int - half + 127) * (1 << 23);
    float scale1, scale2;
    memcpy(&scale1, &scale1_bits, sizeof scale1);
    memcpy(&scale2, &scale2_bits, sizeof scale2);
    float y = p * scale1 * scale2;
    y = x > RWKVX_EXP_POLY_MAX ? __builtin_inff() : y;
    y = x < RWKVX_EXP_POLY_MIN ? 0.0f : y;
    return x != x ? x : y;
}

/* 1 / (1 + e^-x): exactly 0 below -88.72 (e^-x = inf), 1 when e^-x < 2^-24. */
static inline float rwkvx_sigmoid_poly(float x) { return 1.0f / (1.0f + rwkvx_exp_poly(-x)); }

#endif
