/* Per-element operations on [T][C] activations. Per-channel parameters (mu, decay, ...) are [C].
 * Grid-stride loops: any grid works; the launcher uses ceil(n / 256) blocks of 256. */
#include "common.cuh"

/* Token shift over channels: prev[0] = stored, prev[t] = a[t-1]; stored becomes a[T-1]. */
extern "C" __global__ void rwkvx_token_shift(const float *a, float *prev, float *stored, int n_tokens, int C) {
    RWKVX_FOR_EACH(c, C) {
        prev[c] = stored[c];
        for (int t = 1; t < n_tokens; t++) prev[(size_t)t * C + c] = a[(size_t)(t - 1) * C + c];
        stored[c] = a[(size_t)(n_tokens - 1) * C + c];
    }
}

/* v4/v5: out = a * mu + prev * (1 - mu). */
extern "C" __global__ void rwkvx_lerp_mix(const float *a, const float *prev, const float *mu, float *out,
                                          int n_tokens, int C) {
    RWKVX_FOR_EACH(i, (int64_t)n_tokens * C) out[i] = a[i] * mu[i % C] + prev[i] * (1.0f - mu[i % C]);
}

/* v6/v7: out = a + (prev - a) * (mu + m), m an optional per-token correction (NULL: none). out may be m. */
extern "C" __global__ void rwkvx_delta_mix(const float *a, const float *prev, const float *mu, const float *m,
                                           float *out, int n_tokens, int C) {
    RWKVX_FOR_EACH(i, (int64_t)n_tokens * C) {
        const float coef = mu[i % C] + (m != NULL ? m[i] : 0.0f);
        out[i] = a[i] + (prev[i] - a[i]) * coef;
    }
}

extern "C" __global__ void rwkvx_add(float *x, const float *d, int64_t n) { RWKVX_FOR_EACH(i, n) x[i] += d[i]; }

extern "C" __global__ void rwkvx_tanh(float *x, int64_t n) { RWKVX_FOR_EACH(i, n) x[i] = tanhf(x[i]); }

extern "C" __global__ void rwkvx_sigmoid(float *x, int64_t n) { RWKVX_FOR_EACH(i, n) x[i] = rwkvx_sigmoid(x[i]); }

extern "C" __global__ void rwkvx_relu_squared(float *x, int64_t n) {
    RWKVX_FOR_EACH(i, n) {
        const float h = fmaxf(x[i], 0.0f);
        x[i] = h * h;
    }
}

/* y *= sigmoid(r) (receptance gate). */
extern "C" __global__ void rwkvx_mul_sigmoid(float *y, const float *r, int64_t n) {
    RWKVX_FOR_EACH(i, n) y[i] *= rwkvx_sigmoid(r[i]);
}

/* y *= silu(g) = g * sigmoid(g) (v5.2 / v6 output gate). */
extern "C" __global__ void rwkvx_mul_silu(float *y, const float *g, int64_t n) {
    RWKVX_FOR_EACH(i, n) y[i] *= g[i] * rwkvx_sigmoid(g[i]);
}

/* v6 decay: w = exp(-exp(time_decay + w)). */
extern "C" __global__ void rwkvx_decay_v6(float *w, const float *time_decay, int n_tokens, int C) {
    RWKVX_FOR_EACH(i, (int64_t)n_tokens * C) w[i] = expf(-expf(time_decay[i % C] + w[i]));
}
