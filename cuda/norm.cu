/* Layer norm over rows and group norm over each head's slice (biased variance, two passes).
 * out may alias x. */
#include "common.cuh"

/* One block per token row of n floats. Grid: T blocks; blockDim.x a multiple of 32. */
extern "C" __global__ void rwkvx_layer_norm_f32(const float *x, float *out, int n, const float *weight,
                                                const float *bias, float eps) {
    const float *xr = x + (size_t)blockIdx.x * n;
    float *o = out + (size_t)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i];
    const float mean = rwkvx_block_sum(s) / n;
    float q = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) q += (xr[i] - mean) * (xr[i] - mean);
    const float inv = rsqrtf(rwkvx_block_sum(q) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = (xr[i] - mean) * inv * weight[i] + bias[i];
}

/* One warp per (head, token): normalize the head's S floats, then apply weight and bias over all C.
 * Grid: (n_head, T); blockDim.x = 32. */
extern "C" __global__ void rwkvx_group_norm_f32(const float *x, float *out, int head_size, const float *weight,
                                                const float *bias, float eps) {
    const int C = gridDim.x * head_size;
    const size_t base = (size_t)blockIdx.y * C + (size_t)blockIdx.x * head_size;
    const int c0 = blockIdx.x * head_size;
    float s = 0.0f;
    for (int j = threadIdx.x; j < head_size; j += RWKVX_WARP) s += x[base + j];
    const float mean = rwkvx_warp_sum(s) / head_size;
    float q = 0.0f;
    for (int j = threadIdx.x; j < head_size; j += RWKVX_WARP) q += (x[base + j] - mean) * (x[base + j] - mean);
    const float inv = rsqrtf(rwkvx_warp_sum(q) / head_size + eps);
    for (int j = threadIdx.x; j < head_size; j += RWKVX_WARP)
        out[base + j] = (x[base + j] - mean) * inv * weight[c0 + j] + bias[c0 + j];
}
