/* The WKV recurrences of RWKV v4, v5/v6 and v7, one token after another.
 * Variables are named as in the RWKV papers; state layouts are rwkv.cpp's. */
#include <math.h>

#include "kernels.h"
#include "v7_gates_body.h"
#include "wkv7_body.h"

/* v4: per channel, a numerically stable ratio of decayed sums (aa / bb),
 * with pp the running exponent so that nothing overflows. */
void rwkvx_wkv4_ref(int64_t n_tokens, int64_t C, int64_t ld, const float *k, const float *v,
                    const float *time_first, const float *time_decay,
                    float *aa, float *bb, float *pp, float *y) {
    for (int64_t t = 0; t < n_tokens; t++) {
        const float *kt = k + t * ld, *vt = v + t * ld;
        float *yt = y + t * ld;
        for (int64_t c = 0; c < C; c++) {
            float ww = time_first[c] + kt[c];
            float m = fmaxf(pp[c], ww);
            float e1 = expf(pp[c] - m), e2 = expf(ww - m);
            yt[c] = (e1 * aa[c] + e2 * vt[c]) / (e1 * bb[c] + e2);
            ww = pp[c] + time_decay[c];
            m = fmaxf(ww, kt[c]);
            e1 = expf(ww - m);
            e2 = expf(kt[c] - m);
            aa[c] = e1 * aa[c] + e2 * vt[c];
            bb[c] = e1 * bb[c] + e2;
            pp[c] = m;
        }
    }
}

/* v5/v6: per head a matrix state M[i=key][j=value].
 *   y[j] = sum_i r[i] * (u[i] k[i] v[j] + M[i][j]);   M[i][j] = w[i] M[i][j] + k[i] v[j] */
void rwkvx_wkv5_ref(int64_t n_tokens, int64_t n_head, int64_t S, int64_t ld,
                    const float *r, const float *k, const float *v, const float *u,
                    const float *w, int64_t w_stride, float *state, float *y) {
    for (int64_t t = 0; t < n_tokens; t++) {
        const float *rt = r + t * ld, *kt = k + t * ld, *vt = v + t * ld, *wt = w + t * w_stride;
        float *yt = y + t * ld;
        for (int64_t h = 0; h < n_head; h++) {
            float *M = state + h * S * S;
            const int64_t o = h * S;
            for (int64_t j = 0; j < S; j++) yt[o + j] = 0.0f;
            for (int64_t i = 0; i < S; i++) {
                const float ri = rt[o + i], ki = kt[o + i], ui = u[o + i], wi = wt[o + i];
                float *Mi = M + i * S;
                for (int64_t j = 0; j < S; j++) {
                    const float kv = ki * vt[o + j];
                    yt[o + j] += ri * (ui * kv + Mi[j]);
                    Mi[j] = wi * Mi[j] + kv;
                }
            }
        }
    }
}

void rwkvx_wkv7_heads_ref(int64_t n_tokens, int64_t n_head, int64_t S, int64_t h_begin, int64_t h_end,
                          const float *r, const float *w, const float *k, const float *v, const float *a,
                          const float *b, float *state, float *y) {
    wkv7_heads(n_tokens, n_head, S, h_begin, h_end, r, w, k, v, a, b, state, y);
}

void rwkvx_wkv7_ref(int64_t n_tokens, int64_t n_head, int64_t S,
                    const float *r, const float *w, const float *k, const float *v,
                    const float *a, const float *b, float *state, float *y) {
    wkv7_heads(n_tokens, n_head, S, 0, n_head, r, w, k, v, a, b, state, y);
}

void rwkvx_v7_gates_ref(int64_t h_begin, int64_t h_end, int64_t S, const rwkvx_v7_gates *g) {
    v7_gates(h_begin, h_end, S, g);
}
