/* The WKV recurrences, one token after another, on state kept in device memory (rwkv.cpp's layout).
 * Same math and order of operations as rwkvx/_kernels/wkv_ref.c. */
#include "common.cuh"

/* v4, one thread per channel. aa, bb, pp are the layer's [C] state vectors. Grid: ceil(C / 256) x 256. */
extern "C" __global__ void rwkvx_wkv4_f32(int n_tokens, int C, const float *k, const float *v,
                                          const float *time_first, const float *time_decay,
                                          float *aa, float *bb, float *pp, float *y) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float a = aa[c], b = bb[c], p = pp[c];
    const float u = time_first[c], w = time_decay[c];
    for (int t = 0; t < n_tokens; t++) {
        const size_t i = (size_t)t * C + c;
        float ww = u + k[i];
        float m = fmaxf(p, ww);
        float e1 = expf(p - m), e2 = expf(ww - m);
        y[i] = (e1 * a + e2 * v[i]) / (e1 * b + e2);
        ww = p + w;
        m = fmaxf(ww, k[i]);
        e1 = expf(ww - m);
        e2 = expf(k[i] - m);
        a = e1 * a + e2 * v[i];
        b = e1 * b + e2;
        p = m;
    }
    aa[c] = a, bb[c] = b, pp[c] = p;
}

/* v5/v6: one block per head, thread j owns value column j of M[i=key][j=value] (in registers).
 *   y[j] = sum_i r[i] (u[i] k[i] v[j] + M[i][j]);   M[i][j] = w[i] M[i][j] + k[i] v[j]
 * w is per token with row stride w_stride (v6: C), or one row for all tokens (v5: w_stride 0).
 * Grid: n_head blocks of head_size (<= RWKVX_MAX_HEAD_SIZE) threads. */
extern "C" __global__ void rwkvx_wkv5_f32(int n_tokens, int head_size, const float *r, const float *k,
                                          const float *v, const float *u, const float *w, int w_stride,
                                          float *state, float *y) {
    const int S = head_size, C = gridDim.x * S, j = threadIdx.x, c0 = blockIdx.x * S;
    __shared__ float rs[RWKVX_MAX_HEAD_SIZE], ks[RWKVX_MAX_HEAD_SIZE], us[RWKVX_MAX_HEAD_SIZE],
        ws[RWKVX_MAX_HEAD_SIZE];
    float *M = state + (size_t)blockIdx.x * S * S;
    float col[RWKVX_MAX_HEAD_SIZE];
#pragma unroll
    for (int i = 0; i < RWKVX_MAX_HEAD_SIZE; i++)
        if (i < S) col[i] = M[i * S + j];
    us[j] = u[c0 + j];
    for (int t = 0; t < n_tokens; t++) {
        const size_t o = (size_t)t * C + c0;
        __syncthreads(); /* everyone is done with the previous token's rs/ks/ws */
        rs[j] = r[o + j], ks[j] = k[o + j], ws[j] = w[(size_t)t * w_stride + c0 + j];
        __syncthreads();
        const float vj = v[o + j];
        float yj = 0.0f;
#pragma unroll
        for (int i = 0; i < RWKVX_MAX_HEAD_SIZE; i++) {
            if (i < S) {
                const float kv = ks[i] * vj;
                yj += rs[i] * (us[i] * kv + col[i]);
                col[i] = ws[i] * col[i] + kv;
            }
        }
        y[o + j] = yj;
    }
#pragma unroll
    for (int i = 0; i < RWKVX_MAX_HEAD_SIZE; i++)
        if (i < S) M[i * S + j] = col[i];
}

/* v7: one block per head, thread i owns row i of M[i=value][j=key] (in registers).
 *   sa = sum_j a[j] M[i][j];  M[i][j] = M[i][j] w[j] + v[i] k[j] + sa b[j];  y[i] = sum_j M[i][j] r[j]
 * Grid: n_head blocks of head_size (<= RWKVX_MAX_HEAD_SIZE) threads. */
extern "C" __global__ void rwkvx_wkv7_f32(int n_tokens, int head_size, const float *r, const float *w,
                                          const float *k, const float *v, const float *a, const float *b,
                                          float *state, float *y) {
    const int S = head_size, C = gridDim.x * S, i = threadIdx.x, c0 = blockIdx.x * S;
    __shared__ float rs[RWKVX_MAX_HEAD_SIZE], ws[RWKVX_MAX_HEAD_SIZE], ks[RWKVX_MAX_HEAD_SIZE],
        as[RWKVX_MAX_HEAD_SIZE], bs[RWKVX_MAX_HEAD_SIZE];
    float *M = state + (size_t)blockIdx.x * S * S + (size_t)i * S;
    float row[RWKVX_MAX_HEAD_SIZE];
#pragma unroll
    for (int j = 0; j < RWKVX_MAX_HEAD_SIZE; j++)
        if (j < S) row[j] = M[j];
    for (int t = 0; t < n_tokens; t++) {
        const size_t o = (size_t)t * C + c0;
        __syncthreads();
        rs[i] = r[o + i], ws[i] = w[o + i], ks[i] = k[o + i], as[i] = a[o + i], bs[i] = b[o + i];
        __syncthreads();
        const float vi = v[o + i];
        float sa = 0.0f;
#pragma unroll
        for (int j = 0; j < RWKVX_MAX_HEAD_SIZE; j++)
            if (j < S) sa += as[j] * row[j];
        float yi = 0.0f;
#pragma unroll
        for (int j = 0; j < RWKVX_MAX_HEAD_SIZE; j++) {
            if (j < S) {
                row[j] = row[j] * ws[j] + vi * ks[j] + sa * bs[j];
                yi += row[j] * rs[j];
            }
        }
        y[o + i] = yi;
    }
#pragma unroll
    for (int j = 0; j < RWKVX_MAX_HEAD_SIZE; j++)
        if (j < S) M[j] = row[j];
}
