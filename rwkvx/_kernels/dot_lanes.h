/* The portable float dot product: sum_j x[j] y[j] as eight interleaved partial
 * sums combined in a fixed tree. The same order on every call (so results never
 * depend on T, threads or ISA level, where a body is compiled per level), and
 * independent chains the compiler turns into vector operations: one running
 * sum would be a chain of dependent additions. */
#ifndef RWKVX_DOT_LANES_H
#define RWKVX_DOT_LANES_H

#include <stdint.h>

static inline float dot_lanes(const float *x, const float *y, int64_t n) {
    float acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) acc[l] += x[j + l] * y[j + l];
    for (int l = 0; j < n; j++, l++) acc[l] += x[j] * y[j];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* The same with sixteen partial sums (lane l: the products j = l mod 16, in order of j),
 * folded by halving, (l + l^8), (l + l^4), (l + l^2), (l + l^1): the order in which
 * AVX-512 reduces sixteen rows' sums at once with full-width vectors
 * (reduce16_avx512.h), so that its results equal this portable code's bit for bit. */
static inline float dot16_lanes(const float *x, const float *y, int64_t n) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) acc[l] += x[j + l] * y[j + l];
    for (int l = 0; j < n; j++, l++) acc[l] += x[j] * y[j];
    for (int width = 8; width >= 1; width /= 2)
        for (int l = 0; l < width; l++) acc[l] += acc[l + width];
    return acc[0];
}

#endif
