/* Per-block int8 quantization of activations (ggml's Q8_0 / Q8_1 reference rules).
 *
 * Products with block-quantized weights run on integers: each activation row is
 * cut into 32-blocks, each block stored as int8 quants and one scale, and block
 * dot products are int x int8 -> int32, scaled once per block. Doing this for
 * every token count and on every ISA with this one scalar routine makes the
 * quants, and so every integer block sum, independent of T and of the level.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define LANES 8 /* the lane-vector copies of a block's scalars: one ymm, half a zmm */

int rwkvx_type_is_quantized(int type) { return type != RWKVX_TYPE_F32 && type != RWKVX_TYPE_F16; }

int32_t rwkvx_type_code_offset(int type) {
    switch (type) {
    case RWKVX_TYPE_Q4_0: return 8;
    case RWKVX_TYPE_Q5_0: return 16;
    case RWKVX_TYPE_Q8_0: return 128;
    default: return 0;
    }
}

static int has_min(int type) { return type == RWKVX_TYPE_Q4_1 || type == RWKVX_TYPE_Q5_1; }

static float fp16_rounded(float v) { return rwkvx_half_to_float(rwkvx_float_to_half(v)); }

/* roundf(v) (halves away from zero) for |v| < 2^23, without the libm call that
 * dominated quantization: the cast truncates, and v - trunc(v) is exact here.
 * (act_quant_avx512.c does the same three steps on 16 lanes.) */
static inline int32_t round_half_away(float v) {
    int32_t q = (int32_t)v;
    const float frac = v - (float)q;
    q += (frac >= 0.5f) - (frac <= -0.5f);
    return q;
}

/* One block of 32 floats -> quants q, scale (as stored: fp16-rounded) and sum(q).
 * A block with a non-finite value gets quants 0 and scale amax (inf/NaN), so its
 * products come out NaN, as the float path would give, without undefined casts. */
static void quantize_block(const float *x, int8_t *q, float *d_stored, float *d_exact, int32_t *sum) {
    /* amax over 8 independent lanes, without the one long chain of compares and
     * branches (max is exact in any order once NaN is ruled out); with a NaN, the
     * single scan this replaces ended on the last NaN's value */
    float lane_max[8] = {0};
    int any_nan = 0;
    for (int j = 0; j < RWKVX_QK; j += 8)
        for (int l = 0; l < 8; l++) {
            const float a = fabsf(x[j + l]);
            lane_max[l] = a > lane_max[l] ? a : lane_max[l];
            any_nan |= a != a;
        }
    float amax = 0.0f;
    for (int l = 0; l < 8; l++) amax = lane_max[l] > amax ? lane_max[l] : amax;
    if (any_nan)
        for (int j = RWKVX_QK - 1; j >= 0; j--)
            if (x[j] != x[j]) {
                amax = fabsf(x[j]);
                break;
            }
    *sum = 0;
    if (!isfinite(amax)) {
        memset(q, 0, RWKVX_QK);
        *d_stored = *d_exact = amax;
        return;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < RWKVX_QK; j++) {
        q[j] = (int8_t)round_half_away(x[j] * id); /* |x * id| <= 127 (+ rounding): fits */
        *sum += q[j];
    }
    *d_exact = d;
    *d_stored = fp16_rounded(d);
}

void rwkvx_quantize_blocks_ref(const float *x, int64_t n_blocks, int8_t *q, float *d_stored, float *d_exact,
                               int32_t *sum) {
    for (int64_t b = 0; b < n_blocks; b++)
        quantize_block(x + b * RWKVX_QK, q + b * RWKVX_QK, d_stored + b, d_exact + b, sum + b);
}

/* The buffers of the calling thread's last products, kept for its next ones: a
 * token quantizes activations for every product of every layer, several of them
 * at once at few tokens (forward.c quantizes the inputs of r, k and v together),
 * and a fresh allocation of this size is a fresh mapping whose pages the kernel
 * must fault in and clear each time. Freed when the thread exits. */
#define CACHED_BUFFERS 8

static pthread_key_t cached_buffer_key;
static pthread_once_t cached_buffer_once = PTHREAD_ONCE_INIT;

typedef struct cached_buffers {
    void *memory[CACHED_BUFFERS]; /* NULL: a free slot */
    size_t bytes[CACHED_BUFFERS];
} cached_buffers;

static void free_cached_buffers(void *p) {
    cached_buffers *c = p;
    for (int i = 0; i < CACHED_BUFFERS; i++) free(c->memory[i]);
    free(c);
}

static void create_cached_buffer_key(void) { (void)pthread_key_create(&cached_buffer_key, free_cached_buffers); }

/* A 64-byte aligned buffer of at least n bytes: the smallest cached one large enough, if any. */
static void *take_buffer(size_t n) {
    pthread_once(&cached_buffer_once, create_cached_buffer_key);
    cached_buffers *c = pthread_getspecific(cached_buffer_key);
    int best = -1;
    for (int i = 0; c != NULL && i < CACHED_BUFFERS; i++)
        if (c->memory[i] != NULL && c->bytes[i] >= n && (best < 0 || c->bytes[i] < c->bytes[best])) best = i;
    if (best < 0) return aligned_alloc(64, (n + 63) / 64 * 64);
    void *memory = c->memory[best];
    c->memory[best] = NULL;
    return memory;
}

/* Keep the buffer for the thread's next products: in a free slot, else in place of the smallest cached
 * one if it is larger. */
static void give_back_buffer(void *memory, size_t n) {
    cached_buffers *c = pthread_getspecific(cached_buffer_key);
    if (c == NULL) {
        c = calloc(1, sizeof *c);
        if (c == NULL || pthread_setspecific(cached_buffer_key, c) != 0) {
            free(c);
            free(memory);
            return;
        }
    }
    int slot = 0;
    for (int i = 0; i < CACHED_BUFFERS; i++) {
        if (c->memory[i] == NULL) {
            slot = i;
            break;
        }
        if (c->bytes[i] < c->bytes[slot]) slot = i;
    }
    if (c->memory[slot] != NULL && c->bytes[slot] >= n) {
        free(memory);
        return;
    }
    free(c->memory[slot]);
    c->memory[slot] = memory;
    c->bytes[slot] = n;
}

int rwkvx_q8_acts_alloc(rwkvx_q8_acts *a, int64_t n_tokens, int64_t n_in, int lanes) {
    const int64_t nb = n_in / RWKVX_QK, stride = (nb + 1) & ~(int64_t)1;
    const size_t qs_bytes = (size_t)(n_tokens * stride * RWKVX_QK);
    const size_t scalar_bytes = (size_t)(n_tokens * stride) * 4, lane_bytes = lanes ? scalar_bytes * LANES : 0;
    /* one 64-byte aligned buffer (every byte of it written by fill): quants, the lane vectors (whole
     * cache lines: stride is even), then the compact scalars */
    a->bytes = qs_bytes + 2 * lane_bytes + 2 * scalar_bytes;
    a->memory = take_buffer(a->bytes);
    if (a->memory == NULL) return RWKVX_ERR_ALLOC;
    a->n_tokens = n_tokens;
    a->n_blocks = nb;
    a->stride_blocks = stride;
    a->qs = a->memory;
    a->dv_lanes = lanes ? (float *)((uint8_t *)a->memory + qs_bytes) : NULL;
    a->aux_lanes = lanes ? (int32_t *)((uint8_t *)a->memory + qs_bytes + lane_bytes) : NULL;
    a->dv = (float *)((uint8_t *)a->memory + qs_bytes + 2 * lane_bytes);
    a->aux = (int32_t *)((uint8_t *)a->memory + qs_bytes + 2 * lane_bytes + scalar_bytes);
    return RWKVX_OK;
}

/* Blocks whose scales and sums one call of the level's routine returns (on the stack). */
#define FILL_BLOCKS 64

void rwkvx_q8_acts_fill_blocks(rwkvx_q8_acts *a, int weight_type, const float *x, int64_t ldx, int64_t t_begin,
                               int64_t t_end, int64_t b_begin, int64_t b_end) {
    const int64_t nb = a->n_blocks, stride = a->stride_blocks;
    const int32_t offset = rwkvx_type_code_offset(weight_type);
    const int with_s = has_min(weight_type);
    for (int64_t t = t_begin; t < t_end; t++)
        for (int64_t b0 = b_begin; b0 < b_end; b0 += FILL_BLOCKS) {
            const int64_t count = b_end - b0 < FILL_BLOCKS ? b_end - b0 : FILL_BLOCKS, i0 = t * stride + b0;
            float d[FILL_BLOCKS], d_exact[FILL_BLOCKS];
            int32_t sum[FILL_BLOCKS];
            rwkvx_kernels->quantize_blocks(x + t * ldx + b0 * RWKVX_QK, count, a->qs + i0 * RWKVX_QK, d, d_exact, sum);
            for (int64_t k = 0; k < count; k++) {
                const int64_t i = i0 + k;
                a->dv[i] = d[k];
                if (with_s) {
                    const float s = fp16_rounded((float)sum[k] * d_exact[k]);
                    memcpy(&a->aux[i], &s, sizeof s);
                } else {
                    a->aux[i] = -offset * sum[k];
                }
                if (a->dv_lanes == NULL) continue;
                for (int l = 0; l < LANES; l++) a->dv_lanes[i * LANES + l] = d[k];
                a->aux_lanes[i * LANES] = a->aux[i];
                memset(&a->aux_lanes[i * LANES + 1], 0, (LANES - 1) * sizeof(int32_t));
            }
        }
    if (b_end < nb) return;
    for (int64_t t = t_begin; t < t_end; t++) /* the padding block of an odd count reads as zeros */
        for (int64_t i = t * stride + nb; i < (t + 1) * stride; i++) {
            memset(a->qs + i * RWKVX_QK, 0, RWKVX_QK);
            a->dv[i] = 0.0f;
            a->aux[i] = 0;
            if (a->dv_lanes == NULL) continue;
            memset(a->dv_lanes + i * LANES, 0, LANES * sizeof(float));
            memset(a->aux_lanes + i * LANES, 0, LANES * sizeof(int32_t));
        }
}

void rwkvx_q8_acts_fill(rwkvx_q8_acts *a, int weight_type, const float *x, int64_t ldx, int64_t t_begin,
                        int64_t t_end) {
    rwkvx_q8_acts_fill_blocks(a, weight_type, x, ldx, t_begin, t_end, 0, a->n_blocks);
}

int rwkvx_q8_acts_quantize(rwkvx_q8_acts *a, int weight_type, const float *x, int64_t ldx, int64_t n_tokens,
                           int64_t n_in, int lanes) {
    if (rwkvx_q8_acts_alloc(a, n_tokens, n_in, lanes) != RWKVX_OK) return RWKVX_ERR_ALLOC;
    rwkvx_q8_acts_fill(a, weight_type, x, ldx, 0, n_tokens);
    return RWKVX_OK;
}

int rwkvx_q8_acts_want_lanes(const rwkvx_tensor *w) { return !rwkvx_layout_is_packed(w->layout); }

void rwkvx_q8_acts_free(rwkvx_q8_acts *a) {
    if (a->memory != NULL) give_back_buffer(a->memory, a->bytes);
    a->memory = NULL;
}

void rwkvx_matmul_via_q8(rwkvx_matmul_q8_fn fn, const rwkvx_tensor *w, const float *x, int64_t ldx,
                         int64_t n_tokens, float *y, int64_t ldy) {
    rwkvx_q8_acts a;
    /* the float contract has no error return; like the row buffers elsewhere, only exhausted memory fails */
    if (rwkvx_q8_acts_quantize(&a, w->type, x, ldx, n_tokens, w->n_in, rwkvx_q8_acts_want_lanes(w)) != RWKVX_OK)
        abort();
    fn(w, &a, y, ldy);
    rwkvx_q8_acts_free(&a);
}
