/* Building blocks of the forward pass: one portable reference per operation.
 *
 * The *_ref functions are the scalar oracle, built with baseline flags only.
 * SIMD variants (matmul_avx2.c, ...) implement the same signatures and are
 * reached through the rwkvx_kernels table, filled once at import by the
 * dispatcher; nothing calls an ISA-specific function directly.
 */
#ifndef RWKVX_KERNELS_H
#define RWKVX_KERNELS_H

#include "rwkvx.h"

/* y[t][o] = sum_i W[o][i] * x[t][i] for t < T, o < W->n_rows.
 * x rows are ldx floats apart, y rows ldy floats apart. */
typedef void (*rwkvx_matmul_fn)(const rwkvx_tensor *w, const float *x, int64_t ldx,
                                int64_t n_tokens, float *y, int64_t ldy);

/* Row r of W dequantized into out[W->n_in] (embedding lookup). */
typedef void (*rwkvx_dequant_row_fn)(const rwkvx_tensor *w, int64_t row, float *out);

typedef struct rwkvx_kernel_table {
    const char *isa;
    rwkvx_matmul_fn matmul;
    rwkvx_dequant_row_fn dequant_row;
} rwkvx_kernel_table;

/* The active table; selected once at import (see dispatch.c). */
extern const rwkvx_kernel_table *rwkvx_kernels;

/* Select the active table by name ("scalar", "avx2", "avx512", "neon"); NULL or ""
 * picks the best level that is both compiled and supported by this CPU and OS.
 * Called once, at import, before any forward pass runs. */
enum rwkvx_isa_status {
    RWKVX_ISA_OK = 0,
    RWKVX_ISA_UNKNOWN = 1,       /* not a level name */
    RWKVX_ISA_NOT_COMPILED = 2,  /* this build has no kernels for it */
    RWKVX_ISA_NOT_SUPPORTED = 3, /* the CPU (or the OS, for its registers) lacks it */
};
int rwkvx_select_isa(const char *name);
/* The table of a level if compiled and runnable here, else NULL (tests compare every level). */
const rwkvx_kernel_table *rwkvx_kernel_table_for(const char *name);
int rwkvx_isa_compiled(const char *name);
int rwkvx_isa_supported(const char *name); /* by CPU + OS, whether compiled or not */

/* CPU features as detected (CPUID + XCR0 on x86, HWCAP on aarch64): name i, present or not. */
int rwkvx_cpu_feature_count(void);
const char *rwkvx_cpu_feature_name(int i);
int rwkvx_cpu_feature_present(int i);

void rwkvx_matmul_ref(const rwkvx_tensor *w, const float *x, int64_t ldx,
                      int64_t n_tokens, float *y, int64_t ldy);
void rwkvx_dequant_row_ref(const rwkvx_tensor *w, int64_t row, float *out);
/* SIMD variants of rwkvx_matmul_ref (same contract; per output element the same
 * operations whatever n_tokens is, so sequence mode stays bit-identical). */
void rwkvx_matmul_avx2(const rwkvx_tensor *w, const float *x, int64_t ldx,
                       int64_t n_tokens, float *y, int64_t ldy);
void rwkvx_matmul_avx512(const rwkvx_tensor *w, const float *x, int64_t ldx,
                         int64_t n_tokens, float *y, int64_t ldy);
void rwkvx_matmul_neon(const rwkvx_tensor *w, const float *x, int64_t ldx,
                       int64_t n_tokens, float *y, int64_t ldy);

/* Layer norm of each of T rows of n floats (biased variance). */
void rwkvx_layer_norm_ref(const float *x, float *out, int64_t n_tokens, int64_t n,
                          const float *weight, const float *bias, float eps);
/* Per-head normalization of each row's S-float slices, then one affine over the row. */
void rwkvx_group_norm_ref(const float *x, float *out, int64_t n_tokens, int64_t n_head,
                          int64_t head_size, const float *weight, const float *bias, float eps);

/* WKV recurrences over T tokens, state updated in place (layouts in rwkvx.h). */
void rwkvx_wkv4_ref(int64_t n_tokens, int64_t C, const float *k, const float *v,
                    const float *time_first, const float *time_decay,
                    float *aa, float *bb, float *pp, float *y);
/* v5.1, v5.2 and v6: w has stride w_stride floats per token (0 = same every token). */
void rwkvx_wkv5_ref(int64_t n_tokens, int64_t n_head, int64_t head_size,
                    const float *r, const float *k, const float *v, const float *u,
                    const float *w, int64_t w_stride, float *state, float *y);
void rwkvx_wkv7_ref(int64_t n_tokens, int64_t n_head, int64_t head_size,
                    const float *r, const float *w, const float *k, const float *v,
                    const float *a, const float *b, float *state, float *y);

#endif /* RWKVX_KERNELS_H */
