/* v7's recurrence and per-token vector work compiled for AVX2 (see wkv7_body.h and
 * v7_gates_body.h: the same floats as the scalar build). */
#include "kernels.h"
#include "v7_gates_body.h"
#include "wkv7_body.h"

void rwkvx_wkv7_heads_avx2(int64_t n_tokens, int64_t n_head, int64_t S, int64_t h_begin, int64_t h_end,
                          const float *r, const float *w, const float *k, const float *v, const float *a,
                          const float *b, float *state, float *y) {
    wkv7_heads(n_tokens, n_head, S, h_begin, h_end, r, w, k, v, a, b, state, y);
}

void rwkvx_v7_gates_avx2(int64_t h_begin, int64_t h_end, int64_t S, const rwkvx_v7_gates *g) {
    v7_gates(h_begin, h_end, S, g);
}
