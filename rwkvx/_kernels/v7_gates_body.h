/* v7's per-token vector work between its products and its recurrence (decay,
 * learning rate, normalized key, value residual, WKV's a and b), as C that each
 * kernel level compiles with its own flags (wkv_ref.c, wkv7_avx2.c,
 * wkv7_avx512.c). Like wkv7_body.h: nothing contracted or reordered, so every
 * level computes the same floats, and exp_poly.h keeps the exponentials in
 * vectors. Decoding v7 1.5B this was 20 us per layer compiled for SSE2.
 */
#ifndef RWKVX_V7_GATES_BODY_H
#define RWKVX_V7_GATES_BODY_H

#include <math.h>

#include "dot_lanes.h"
#include "exp_poly.h"
#include "kernels.h"

/* Heads [h_begin, h_end): channels [h_begin * S, h_end * S) of every row. */
static inline void v7_gates(int64_t h_begin, int64_t h_end, int64_t S, const rwkvx_v7_gates *g) {
    const int64_t o = h_begin * S, C = (h_end - h_begin) * S; /* offset and width of the range */
    const float *restrict w0 = g->w0 + o, *restrict a0 = g->a0 + o, *restrict k_k = g->k_k + o,
                *restrict k_a = g->k_a + o;
    float *restrict w = g->w + o, *restrict alpha = g->alpha + o, *restrict k = g->k + o, *restrict kk = g->kk + o;
    /* decay w = exp(-e^-0.5 * sigmoid(w0 + W2 tanh(W1 xw))), in (e^-0.607, 1) */
    for (int64_t i = 0; i < C; i++) w[i] = rwkvx_exp_poly(-0.606531f * rwkvx_sigmoid_poly(w0[i] + w[i]));
    /* in-context learning rate alpha = sigmoid(a0 + A2 A1 xa) */
    for (int64_t i = 0; i < C; i++) alpha[i] = rwkvx_sigmoid_poly(a0[i] + alpha[i]);
    /* kk = per-head unit vector of k*k_k; k scaled by the replacement rate */
    for (int64_t i = 0; i < C; i++) kk[i] = k[i] * k_k[i];
    for (int64_t h = 0; h < h_end - h_begin; h++) {
        float *restrict head = kk + h * S;
        const float inv = 1.0f / fmaxf(sqrtf(dot_lanes(head, head, S)), 1e-12f);
        for (int64_t i = 0; i < S; i++) head[i] *= inv;
    }
    for (int64_t i = 0; i < C; i++) k[i] = k[i] * (1.0f + (alpha[i] - 1.0f) * k_a[i]);
    /* value residual: mix towards the first layer's values */
    if (g->v0 != NULL) {
        const float *restrict v0 = g->v0 + o, *restrict v_first = g->v_first + o, *restrict v_mix = g->v_mix + o;
        float *restrict v = g->v + o;
        for (int64_t i = 0; i < C; i++) v[i] += (v_first[i] - v[i]) * rwkvx_sigmoid_poly(v0[i] + v_mix[i]);
    }
    float *restrict a = g->a + o, *restrict b = g->b + o;
    for (int64_t i = 0; i < C; i++) {
        a[i] = -kk[i];
        b[i] = kk[i] * alpha[i];
    }
}

#endif
