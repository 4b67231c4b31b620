/* Layer norm and per-head group norm (biased variance, as RWKV trains with). */
#include <math.h>

#include "kernels.h"

/* Sums in double as eight interleaved partial sums combined in a fixed tree:
 * one running sum is a chain of dependent additions (a layer norm over 2048
 * channels took 6 us of it), independent ones become vector code. */
#define NORM_LANES 8

static double combine(const double *acc) {
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* Mean and 1 / sqrt(variance + eps) of n floats, two passes in double so large
 * offsets do not cancel. */
static void moments(const float *x, int64_t n, float eps, double *mean_out, double *inv_out) {
    double acc[NORM_LANES] = {0};
    int64_t i = 0;
    for (; i + NORM_LANES <= n; i += NORM_LANES)
        for (int l = 0; l < NORM_LANES; l++) acc[l] += x[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += x[i];
    const double mean = combine(acc) / (double)n;
    double sq[NORM_LANES] = {0};
    for (i = 0; i + NORM_LANES <= n; i += NORM_LANES)
        for (int l = 0; l < NORM_LANES; l++) {
            const double d = x[i + l] - mean;
            sq[l] += d * d;
        }
    for (int l = 0; i < n; i++, l++) {
        const double d = x[i] - mean;
        sq[l] += d * d;
    }
    *mean_out = mean;
    *inv_out = 1.0 / sqrt(combine(sq) / (double)n + eps);
}

/* Normalize n floats to zero mean and unit variance. */
static void normalize(const float *x, float *out, int64_t n, float eps) {
    double mean, inv;
    moments(x, n, eps, &mean, &inv);
    for (int64_t i = 0; i < n; i++) out[i] = (float)((x[i] - mean) * inv);
}

void rwkvx_layer_norm_channels(const float *x, float *out, int64_t n, int64_t c_begin, int64_t c_end,
                               const float *weight, const float *bias, float eps) {
    double mean, inv;
    moments(x, n, eps, &mean, &inv);
    for (int64_t i = c_begin; i < c_end; i++) {
        const float normalized = (float)((x[i] - mean) * inv);
        out[i] = normalized * weight[i] + bias[i];
    }
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
