/* Dequantizing matrix products: y[t][r] = sum_i W[r][i] * x[t][i] for T tokens.
 *
 * One warp per output row r. Lane l walks the row's 32-weight chunks l, l+32, ..., dequantizes each
 * once (blocks.h) and applies it to a tile of up to RWKVX_TOKEN_TILE tokens, so a sequence reads each
 * weight once per tile instead of once per token. Serial decoding (T = 1) is the memory-bound case the
 * kernel is shaped for: the row's blocks stream through the warp once. n_in must be a multiple of 32.
 * Grid: ceil(n_rows / (blockDim.x / 32)) blocks; blockDim.x a multiple of 32.
 *
 * x has row stride ldx (floats) so a column slice of a wider buffer can be the input (v6's low-rank
 * slabs); y has row stride ldy. */
#include <cuda_fp16.h>

#include "common.cuh"

#define RWKVX_TOKEN_TILE 8

/* The 32 weights of chunk c of a row, as float. */
template <int TYPE>
__device__ __forceinline__ void load_chunk(const uint8_t *row, int c, float *out) {
    if (TYPE == RWKVX_TYPE_F32) {
        const float *p = (const float *)row + c * RWKVX_QK; /* rows are 128-byte multiples: aligned */
        for (int j = 0; j < RWKVX_QK; j++) out[j] = p[j];
    } else if (TYPE == RWKVX_TYPE_F16) {
        const __half *p = (const __half *)row + c * RWKVX_QK;
        for (int j = 0; j < RWKVX_QK; j++) out[j] = __half2float(p[j]);
    } else {
        rwkvx_dequant_block(TYPE, row, (size_t)c, out);
    }
}

template <int TYPE>
__device__ void matmul_rows(const uint8_t *w, int n_in, int n_rows, const float *x, int ldx, int n_tokens,
                            float *y, int ldy) {
    const int lane = threadIdx.x % RWKVX_WARP;
    const int row = blockIdx.x * (blockDim.x / RWKVX_WARP) + threadIdx.x / RWKVX_WARP;
    if (row >= n_rows) return; /* whole warp leaves together: the shuffles below stay converged */
    const uint8_t *w_row = w + (size_t)row * rwkvx_row_bytes(TYPE, (size_t)n_in);
    const int n_chunks = n_in / RWKVX_QK;
    for (int t0 = 0; t0 < n_tokens; t0 += RWKVX_TOKEN_TILE) {
        const int n_tile = min(RWKVX_TOKEN_TILE, n_tokens - t0);
        float acc[RWKVX_TOKEN_TILE];
#pragma unroll
        for (int tt = 0; tt < RWKVX_TOKEN_TILE; tt++) acc[tt] = 0.0f;
        for (int c = lane; c < n_chunks; c += RWKVX_WARP) {
            float wv[RWKVX_QK];
            load_chunk<TYPE>(w_row, c, wv);
#pragma unroll
            for (int tt = 0; tt < RWKVX_TOKEN_TILE; tt++) {
                if (tt < n_tile) {
                    const float *xt = x + (size_t)(t0 + tt) * ldx + c * RWKVX_QK;
                    float s = 0.0f;
                    for (int j = 0; j < RWKVX_QK; j++) s += wv[j] * xt[j];
                    acc[tt] += s;
                }
            }
        }
#pragma unroll
        for (int tt = 0; tt < RWKVX_TOKEN_TILE; tt++) {
            const float s = rwkvx_warp_sum(acc[tt]);
            if (lane == 0 && tt < n_tile) y[(size_t)(t0 + tt) * ldy + row] = s;
        }
    }
}

#define RWKVX_MATMUL_KERNEL(name, TYPE)                                                                   \
    extern "C" __global__ void name(const uint8_t *w, int n_in, int n_rows, const float *x, int ldx,    \
                                    int n_tokens, float *y, int ldy) {                                  \
        matmul_rows<TYPE>(w, n_in, n_rows, x, ldx, n_tokens, y, ldy);                                   \
    }

RWKVX_MATMUL_KERNEL(rwkvx_matmul_f32_f32, RWKVX_TYPE_F32)
RWKVX_MATMUL_KERNEL(rwkvx_matmul_f16_f32, RWKVX_TYPE_F16)
RWKVX_MATMUL_KERNEL(rwkvx_matmul_q4_0_f32, RWKVX_TYPE_Q4_0)
RWKVX_MATMUL_KERNEL(rwkvx_matmul_q4_1_f32, RWKVX_TYPE_Q4_1)
RWKVX_MATMUL_KERNEL(rwkvx_matmul_q5_0_f32, RWKVX_TYPE_Q5_0)
RWKVX_MATMUL_KERNEL(rwkvx_matmul_q5_1_f32, RWKVX_TYPE_Q5_1)
RWKVX_MATMUL_KERNEL(rwkvx_matmul_q8_0_f32, RWKVX_TYPE_Q8_0)

/* out[t][i] = half(x[t * ldx + i]) for cuBLAS's FP16 x FP16 -> FP32 products (sequence mode). */
extern "C" __global__ void rwkvx_f32_to_f16(const float *x, int ldx, int n_tokens, int n, __half *out) {
    RWKVX_FOR_EACH(i, (int64_t)n_tokens * n) out[i] = __float2half_rn(x[(i / n) * ldx + i % n]);
}
