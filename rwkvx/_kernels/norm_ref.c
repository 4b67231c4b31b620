/* Layer norm and per-head group norm (biased variance, as RWKV trains with). */
#include <math.h>

#include "kernels.h"

/* Normalize n floats to zero mean and unit variance, two passes in double so
 * large offsets do not cancel. */
static void normalize(const float *x, float *out, int64_t n, float eps) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) {
        const double d = x[i] - mean;
        var += d * d;
    }
    var /= (double)n;
    const double inv = 1.0 / sqrt(var + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (float)((x[i] - mean) * inv);
}

void rwkvx_layer_norm_ref(const float *x, float *out, int64_t n_tokens, int64_t n,
                          const float *weight, const float *bias, float eps) {
    for (int64_t t = 0; t < n_tokens; t++) {
        float *o = out + t * n;
        normalize(x + t * n, o, n, eps);
        for (int64_t i = 0; i < n; i++) o[i] = o[i] * weight[i] + bias[i];
    }
}

void rwkvx_group_norm_ref(const float *x, float *out, int64_t n_tokens, int64_t n_head,
                          int64_t head_size, const float *weight, const float *bias, float eps) {
    const int64_t n = n_head * head_size;
    for (int64_t t = 0; t < n_tokens; t++) {
        float *o = out + t * n;
        for (int64_t h = 0; h < n_head; h++)
            normalize(x + t * n + h * head_size, o + h * head_size, head_size, eps);
        for (int64_t i = 0; i < n; i++) o[i] = o[i] * weight[i] + bias[i];
    }
}
