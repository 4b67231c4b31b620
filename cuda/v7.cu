/* RWKV v7 operations around the WKV: decay, learning rate, key normalization, value residual, bonus. */
#include "common.cuh"

/* w = exp(-e^-0.5 * sigmoid(w0 + w)). */
extern "C" __global__ void rwkvx_decay_v7(float *w, const float *w0, int n_tokens, int C) {
    RWKVX_FOR_EACH(i, (int64_t)n_tokens * C) w[i] = expf(-0.606531f * rwkvx_sigmoid(w0[i % C] + w[i]));
}

/* x = sigmoid(bias + x) (the in-context learning rate alpha). */
extern "C" __global__ void rwkvx_sigmoid_bias(float *x, const float *bias, int n_tokens, int C) {
    RWKVX_FOR_EACH(i, (int64_t)n_tokens * C) x[i] = rwkvx_sigmoid(bias[i % C] + x[i]);
}

/* v += (v_first - v) * sigmoid(v0 + mix). */
extern "C" __global__ void rwkvx_value_residual(float *v, const float *v_first, const float *mix, const float *v0,
                                                int n_tokens, int C) {
    RWKVX_FOR_EACH(i, (int64_t)n_tokens * C) v[i] += (v_first[i] - v[i]) * rwkvx_sigmoid(v0[i % C] + mix[i]);
}

/* Per (head, token), one warp: kk = l2n(k * k_k); a = -kk; b = kk * alpha; k *= 1 + (alpha - 1) * k_a.
 * Grid: (n_head, T); blockDim.x = 32. */
extern "C" __global__ void rwkvx_v7_keys(float *k, const float *alpha, const float *k_k, const float *k_a,
                                         float *a, float *b, int head_size) {
    const int C = gridDim.x * head_size, c0 = blockIdx.x * head_size;
    const size_t base = (size_t)blockIdx.y * C + c0;
    float q = 0.0f;
    for (int j = threadIdx.x; j < head_size; j += RWKVX_WARP) {
        const float kk = k[base + j] * k_k[c0 + j];
        q += kk * kk;
    }
    const float inv = 1.0f / fmaxf(sqrtf(rwkvx_warp_sum(q)), 1e-12f);
    for (int j = threadIdx.x; j < head_size; j += RWKVX_WARP) {
        const size_t i = base + j;
        const float kk = k[i] * k_k[c0 + j] * inv;
        a[i] = -kk;
        b[i] = kk * alpha[i];
        k[i] = k[i] * (1.0f + (alpha[i] - 1.0f) * k_a[c0 + j]);
    }
}

/* Per (head, token), one warp: y = (y + (sum_j r k r_k) * v) * g. Grid: (n_head, T); blockDim.x = 32. */
extern "C" __global__ void rwkvx_v7_bonus_gate(float *y, const float *r, const float *k, const float *v,
                                               const float *g, const float *r_k, int head_size) {
    const int C = gridDim.x * head_size, c0 = blockIdx.x * head_size;
    const size_t base = (size_t)blockIdx.y * C + c0;
    float s = 0.0f;
    for (int j = threadIdx.x; j < head_size; j += RWKVX_WARP) s += r[base + j] * k[base + j] * r_k[c0 + j];
    const float bonus = rwkvx_warp_sum(s);
    for (int j = threadIdx.x; j < head_size; j += RWKVX_WARP) {
        const size_t i = base + j;
        y[i] = (y[i] + bonus * v[i]) * g[i];
    }
}
