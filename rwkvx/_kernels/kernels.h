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

/* Activations quantized per 32-block for the integer products with quantized
 * weights (ggml's quantize_row_q8_0/q8_1 reference rules): d = amax/127 rounded
 * to fp16, q = roundf(x / d) computed as x * (1/d) in float32, and for weights
 * of a _1 type s = fp16(float(sum q) * d), with the unrounded d.
 *
 * Each token holds stride_blocks (n_blocks rounded up to even) blocks, the
 * padding all zero, so a kernel may read blocks in pairs. A block's scalars (d,
 * aux) are stored twice: compact, one per block, for the packed products, which
 * read them with the block's 32 quants for every 288-byte column of Q4_0 weights
 * (lane vectors there are 96 bytes of activations per column instead of 40, and
 * a v7 1.5B Q4_0 token took 3% longer: 26.03 vs 25.25 ms without logits, 4
 * alternating runs, 2 threads); and as 8-lane vectors for the file-layout
 * AVX2/AVX-512 kernels, which add them lane-wise (building the vectors from
 * compact scalars in their inner loops cost those 7-11%). */
typedef struct rwkvx_q8_acts {
    int64_t n_tokens;
    int64_t n_blocks;      /* real blocks per token: n_in / 32 */
    int64_t stride_blocks; /* blocks per token in the arrays (n_blocks rounded up to even) */
    int8_t *qs;            /* [n_tokens][stride_blocks][32] quants */
    float *dv;             /* [n_tokens][stride_blocks]: the block's d */
    /* [n_tokens][stride_blocks]: for _0 weight types -offset * sum(q) as int32
     * (offset 8 / 16 / 128 for Q4_0 / Q5_0 / Q8_0: the correction that turns a
     * dot with the unsigned codes u = q_w + offset into the signed dot); for _1
     * types the bits of the float s. */
    int32_t *aux;
    /* the lane copies, or NULL when allocated without them (products over packed weights) */
    float *dv_lanes;    /* [n_tokens][stride_blocks][8]: d in all 8 lanes (32-byte aligned) */
    int32_t *aux_lanes; /* [n_tokens][stride_blocks][8]: aux in lane 0, lanes 1-7 zero (32-byte aligned) */
    void *memory;
    size_t bytes;
} rwkvx_q8_acts;

/* Quantize T rows of n_in floats (ldx apart; n_in a multiple of 32) for products
 * with weights of weight_type. Allocates a->memory (free with rwkvx_q8_acts_free).
 * Returns RWKVX_OK or RWKVX_ERR_ALLOC. The same scalar code on every ISA, so the
 * quants never depend on the kernel level. */
int rwkvx_q8_acts_quantize(rwkvx_q8_acts *a, int weight_type, const float *x, int64_t ldx, int64_t n_tokens,
                           int64_t n_in, int lanes);
/* The same in two steps, so threads can share the rows: allocate for T tokens
 * (the calling thread's buffer is reused from one product to the next), then
 * quantize rows [t_begin, t_end), writing every byte of them, padding included
 * (each row the same whoever does it). */
int rwkvx_q8_acts_alloc(rwkvx_q8_acts *a, int64_t n_tokens, int64_t n_in, int lanes);
/* Whether products with w read the lane copies (the `lanes` argument above): all but packed ones. */
int rwkvx_q8_acts_want_lanes(const rwkvx_tensor *w);
void rwkvx_q8_acts_fill(rwkvx_q8_acts *a, int weight_type, const float *x, int64_t ldx, int64_t t_begin,
                        int64_t t_end);
/* The same for blocks [b_begin, b_end) of each row only (the padding block with the last one), so
 * that threads can each quantize the part of the rows they have computed. */
void rwkvx_q8_acts_fill_blocks(rwkvx_q8_acts *a, int weight_type, const float *x, int64_t ldx, int64_t t_begin,
                               int64_t t_end, int64_t b_begin, int64_t b_end);
void rwkvx_q8_acts_free(rwkvx_q8_acts *a);
/* 1 for the block-quantized types (integer products), 0 for F32/F16. */
int rwkvx_type_is_quantized(int type);
/* The offset added to a _0 type's signed codes to make them unsigned (0 for _1 types). */
int32_t rwkvx_type_code_offset(int type);

/* y[t][o] = sum over blocks b of (float)(integer dot of block b) * d_w * d_x (+ m_w * s_x)
 * for a quantized W and activations quantized for W's type. Per output element
 * the same operations whatever n_tokens is. */
typedef void (*rwkvx_matmul_q8_fn)(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy);

/* The float-activation contract of rwkvx_matmul_fn for a quantized W: quantize x,
 * then fn (one call: used by the per-ISA matmul entries for quantized types). */
void rwkvx_matmul_via_q8(rwkvx_matmul_q8_fn fn, const rwkvx_tensor *w, const float *x, int64_t ldx,
                         int64_t n_tokens, float *y, int64_t ldy);

typedef void (*rwkvx_wkv7_heads_fn)(int64_t n_tokens, int64_t n_head, int64_t head_size, int64_t h_begin,
                                    int64_t h_end, const float *r, const float *w, const float *k, const float *v,
                                    const float *a, const float *b, float *state, float *y);

/* One token of v7's vector work between its products and its recurrence
 * (v7_gates_body.h), for heads [h_begin, h_end): every row holds all the
 * n_head * head_size channels, and only the range's channels are read or written. */
typedef struct rwkvx_v7_gates {
    const float *w0, *a0, *k_k, *k_a; /* the layer's vectors */
    const float *v0;                  /* value residual weights; NULL in layer 0 (no residual) */
    const float *v_first, *v_mix;     /* the first layer's values; V1/V2 low-rank output */
    float *w;                         /* in: decay low-rank output; out: decay */
    float *alpha;                     /* in: learning-rate low-rank output; out: learning rate */
    float *k, *v;                     /* keys, values: updated */
    float *kk, *a, *b;                /* out: normalized key, WKV's a and b */
} rwkvx_v7_gates;
typedef void (*rwkvx_v7_gates_fn)(int64_t h_begin, int64_t h_end, int64_t head_size, const rwkvx_v7_gates *g);
void rwkvx_v7_gates_ref(int64_t h_begin, int64_t h_end, int64_t head_size, const rwkvx_v7_gates *g);
void rwkvx_v7_gates_avx2(int64_t h_begin, int64_t h_end, int64_t head_size, const rwkvx_v7_gates *g);
void rwkvx_v7_gates_avx512(int64_t h_begin, int64_t h_end, int64_t head_size, const rwkvx_v7_gates *g);

/* n_blocks consecutive blocks of 32 activations -> per block: int8 quants q[32], its
 * scale as stored (fp16-rounded) and unrounded, and sum(q): the rules above. Every
 * level's variant gives the same bits (the portable one is the definition). */
typedef void (*rwkvx_quantize_blocks_fn)(const float *x, int64_t n_blocks, int8_t *q, float *d_stored,
                                         float *d_exact, int32_t *sum);
void rwkvx_quantize_blocks_ref(const float *x, int64_t n_blocks, int8_t *q, float *d_stored, float *d_exact,
                               int32_t *sum);
void rwkvx_quantize_blocks_avx2(const float *x, int64_t n_blocks, int8_t *q, float *d_stored, float *d_exact,
                                int32_t *sum);
void rwkvx_quantize_blocks_avx512(const float *x, int64_t n_blocks, int8_t *q, float *d_stored, float *d_exact,
                                  int32_t *sum);

typedef struct rwkvx_kernel_table {
    const char *isa;
    rwkvx_matmul_fn matmul;       /* every type in file layout; quantized ones through matmul_q8 */
    rwkvx_matmul_q8_fn matmul_q8; /* quantized types in file layout, activations already quantized */
    /* Quantized types in the packed16 layout (packed.h); every level has one, the
     * portable reference where the level has no kernel of its own. */
    rwkvx_matmul_q8_fn matmul_q8_packed;
    /* 1 if this level's packed product is faster than its file-layout one, so a
     * model should pack its matrices at load. */
    int prefers_packed;
    /* The packed layout a model packs into at this level (packed.h): the one its
     * matmul_q8_packed reads; the portable reference reads both. */
    int packed_layout;
    rwkvx_dequant_row_fn dequant_row;
    rwkvx_wkv7_heads_fn wkv7_heads;
    rwkvx_v7_gates_fn v7_gates;
    rwkvx_quantize_blocks_fn quantize_blocks;
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
int rwkvx_isa_emulated(const char *name); /* compiled for a test build that emulates it (setup.py) */

/* CPU features as detected (CPUID + XCR0 on x86, HWCAP on aarch64): name i, present or not. */
int rwkvx_cpu_feature_count(void);
const char *rwkvx_cpu_feature_name(int i);
int rwkvx_cpu_feature_present(int i);

void rwkvx_matmul_ref(const rwkvx_tensor *w, const float *x, int64_t ldx,
                      int64_t n_tokens, float *y, int64_t ldy);
void rwkvx_dequant_row_ref(const rwkvx_tensor *w, int64_t row, float *out);
void rwkvx_matmul_q8_ref(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy);
/* The reference's arithmetic for one weight row, decoded to signed codes q [n_blocks][32],
 * scales dw and minima mw [n_blocks]: y[t * ldy] for every token of x. Every scalar oracle
 * (file layout, packed layout) ends here, so they agree by construction. */
void rwkvx_q8_row_products(const int8_t *q, const float *dw, const float *mw, int has_m, int64_t n_blocks,
                           const rwkvx_q8_acts *x, float *y, int64_t ldy);
void rwkvx_matmul_q8_avx2(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy);
void rwkvx_matmul_q8_avx512(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy);
void rwkvx_matmul_q8_neon(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy);
/* The same products over packed16 matrices (packed.h): the portable oracle, AVX2 and AVX-512 VNNI. */
void rwkvx_matmul_q8_packed_ref(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy);
void rwkvx_matmul_q8_packed_avx2(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy);
void rwkvx_matmul_q8_packed_avx512(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy);
/* Rows [begin, end) of w as a tensor of their own (begin a multiple of
 * RWKVX_PACK_ROWS for a packed w): what one thread's share of a product reads. */
rwkvx_tensor rwkvx_tensor_rows(const rwkvx_tensor *w, int64_t begin, int64_t end);
/* Pack a whole matrix (packed.h: rwkvx_pack_groups), its groups split over pool's threads (pool may be NULL). */
struct rwkvx_pool;
void rwkvx_pack_matrix(struct rwkvx_pool *pool, const void *src, int type, int64_t n_in, int64_t n_rows, int layout,
                       void *dst);
/* memcpy of n_bytes split over the pool's threads (pool may be NULL), each thread's share of both
 * buffers mapped in bulk first (the load's copy of the matrices that keep their layout). */
void rwkvx_copy_bytes(struct rwkvx_pool *pool, const void *src, size_t n_bytes, void *dst);
/* SIMD variants of rwkvx_matmul_ref (same contract; per output element the same
 * operations whatever n_tokens is, so sequence mode stays bit-identical). */
void rwkvx_matmul_avx2(const rwkvx_tensor *w, const float *x, int64_t ldx,
                       int64_t n_tokens, float *y, int64_t ldy);
void rwkvx_matmul_avx512(const rwkvx_tensor *w, const float *x, int64_t ldx,
                         int64_t n_tokens, float *y, int64_t ldy);
void rwkvx_matmul_neon(const rwkvx_tensor *w, const float *x, int64_t ldx,
                       int64_t n_tokens, float *y, int64_t ldy);

/* Xor of every 8-byte word of data (a final partial word zero-padded; a read of every byte the compiler cannot skip):
 * the benchmark's memory bandwidth probe. near, far: bytes ahead of each line that it is also prefetched into L1
 * and into L2 (0: not). streams (1, 2, 4 or 8; others round down to one of them): the buffer read as that many
 * contiguous parts side by side, a line of each in turn; window: bytes (whole lines) read that way at a time,
 * window after window (0: the whole buffer at once). */
uint64_t rwkvx_read_stream(const void *data, size_t n_bytes, size_t near, size_t far, int streams, size_t window);

/* Layer norm of each of T rows of n floats (biased variance). */
void rwkvx_layer_norm_ref(const float *x, float *out, int64_t n_tokens, int64_t n,
                          const float *weight, const float *bias, float eps);
/* Per-head normalization of each row's S-float slices, then one affine over the row. */
/* The same for one token, writing only channels [c_begin, c_end) of out (the statistics
 * are still those of all n): threads can share a token's channels, with the same floats. */
void rwkvx_layer_norm_channels(const float *x, float *out, int64_t n, int64_t c_begin, int64_t c_end,
                               const float *weight, const float *bias, float eps);
void rwkvx_group_norm_ref(const float *x, float *out, int64_t n_tokens, int64_t n_head,
                          int64_t head_size, const float *weight, const float *bias, float eps);

/* WKV recurrences over T tokens, state updated in place (layouts in rwkvx.h). v4: C channels, each its
 * own; v5/v6: n_head heads. A token's row of r, k, v, y is ld floats after the previous token's, so a
 * call may cover part of the channels or heads (with the pointers and states moved to the first). */
void rwkvx_wkv4_ref(int64_t n_tokens, int64_t C, int64_t ld, const float *k, const float *v,
                    const float *time_first, const float *time_decay,
                    float *aa, float *bb, float *pp, float *y);
/* v5.1, v5.2 and v6: w has stride w_stride floats per token (0 = same every token). */
void rwkvx_wkv5_ref(int64_t n_tokens, int64_t n_head, int64_t head_size, int64_t ld,
                    const float *r, const float *k, const float *v, const float *u,
                    const float *w, int64_t w_stride, float *state, float *y);
void rwkvx_wkv7_ref(int64_t n_tokens, int64_t n_head, int64_t head_size,
                    const float *r, const float *w, const float *k, const float *v,
                    const float *a, const float *b, float *state, float *y);
/* The same for heads [h_begin, h_end) only (arrays still hold all n_head heads):
 * heads are independent, so threads may each take a range. One per level, all
 * giving the same floats (wkv7_body.h); reached through rwkvx_kernels->wkv7_heads. */
void rwkvx_wkv7_heads_ref(int64_t n_tokens, int64_t n_head, int64_t head_size, int64_t h_begin, int64_t h_end,
                          const float *r, const float *w, const float *k, const float *v,
                          const float *a, const float *b, float *state, float *y);
void rwkvx_wkv7_heads_avx2(int64_t n_tokens, int64_t n_head, int64_t head_size, int64_t h_begin, int64_t h_end,
                           const float *r, const float *w, const float *k, const float *v,
                           const float *a, const float *b, float *state, float *y);
void rwkvx_wkv7_heads_avx512(int64_t n_tokens, int64_t n_head, int64_t head_size, int64_t h_begin, int64_t h_end,
                             const float *r, const float *w, const float *k, const float *v,
                             const float *a, const float *b, float *state, float *y);

#endif /* RWKVX_KERNELS_H */
