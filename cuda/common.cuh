/* Helpers shared by the rwkvx CUDA kernels (cuda/*.cu).
 *
 * Conventions of every kernel: activations are float32, row-major [T][n] (T tokens); weights use the
 * block layouts of rwkvx/_kernels/blocks.h, whose per-block dequantization is the same code the CPU
 * runs. Kernels are extern "C" so the Python side finds them by name in the PTX. */
#ifndef RWKVX_CUDA_COMMON_CUH
#define RWKVX_CUDA_COMMON_CUH

#include <stdint.h>

#include "blocks.h"

#define RWKVX_WARP 32
#define RWKVX_MAX_HEAD_SIZE 64 /* WKV kernels keep one row/column of a head's state in registers */

__device__ __forceinline__ float rwkvx_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Sum over the 32 lanes of a warp; every lane gets the total. */
__device__ __forceinline__ float rwkvx_warp_sum(float v) {
    for (int offset = RWKVX_WARP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

/* Sum over all threads of a block (blockDim.x a multiple of 32, at most 1024); every thread gets it. */
__device__ __forceinline__ float rwkvx_block_sum(float v) {
    __shared__ float partial[RWKVX_WARP];
    const int lane = threadIdx.x % RWKVX_WARP, warp = threadIdx.x / RWKVX_WARP;
    const int n_warps = blockDim.x / RWKVX_WARP;
    v = rwkvx_warp_sum(v);
    __syncthreads(); /* partial[] may still be read by a previous call */
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < n_warps ? partial[lane] : 0.0f;
    return rwkvx_warp_sum(v);
}

/* Grid-stride loop over n elements. */
#define RWKVX_FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

#endif /* RWKVX_CUDA_COMMON_CUH */
