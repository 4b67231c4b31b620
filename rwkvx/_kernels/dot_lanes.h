/* The portable float dot product: sum_j x[j] y[j] as `lanes` interleaved partial
 * sums (lane l takes the products j = l mod lanes, in order of j), folded by
 * halving: (l + l^(lanes/2)), ..., (l + l^1). The same order on every call (so
 * results never depend on T, threads or ISA level, where a body is compiled per
 * level), and independent chains the compiler turns into vector operations: one
 * running sum would be a chain of dependent additions. With 16 lanes it is the
 * order in which AVX-512 reduces sixteen rows' sums at once (reduce16_avx512.h),
 * so that code's results equal this one's bit for bit. */
#ifndef RWKVX_DOT_LANES_H
#define RWKVX_DOT_LANES_H

#include <stdint.h>

/* lanes: 8 or 16, a constant at every call (inlined, the loops unroll into vectors). */
static inline float dot_lanes_n(const float *x, const float *y, int64_t n, int lanes) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + lanes <= n; j += lanes)
        for (int l = 0; l < lanes; l++) acc[l] += x[j + l] * y[j + l];
    for (int l = 0; j < n; j++, l++) acc[l] += x[j] * y[j];
    for (int width = lanes / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++) acc[l] += acc[l + width];
    return acc[0];
}

static inline float dot_lanes(const float *x, const float *y, int64_t n) { return dot_lanes_n(x, y, n, 8); }

static inline float dot16_lanes(const float *x, const float *y, int64_t n) { return dot_lanes_n(x, y, n, 16); }

#endif
