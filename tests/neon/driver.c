/* NEON kernels against the scalar reference, built for aarch64 and run under emulation.
 *
 * tests/test_neon.py links this driver with every C file of rwkvx/_kernels/ that
 * setup.py would compile on aarch64 (the portable ones plus *_neon.c), so the
 * link itself proves the C core builds there. Each check prints one FAIL line
 * with the first bad element; the last line is "checked <n> cases, <f> failed"
 * and the exit status is 1 if anything failed.
 *
 * F32/F16 weights (float activations, as in tests/test_kernels.py):
 * - exact: integer weights and small integer activations, so every partial sum
 *   is an integer below 2**24 and both kernels must give the exact float64
 *   result, bit for bit;
 * - random: the two kernels see the same float32 weights and may differ only
 *   by summation order, bounded by REORDER_ULPS (see check_case).
 * Quantized weights: both kernels quantize the activations with the same code
 * (act_quant.c), their integer block dots are exact, and the NEON kernel repeats
 * the reference's float operations lane by lane, so every input kind must give
 * the reference's bits: exact (unit scales, integer offsets), random, and the
 * extremes: every code at its lowest / highest value (nibbles 0 / 15, all INT5
 * high bits clear / set, INT8 -128 / 127) with scale 0.5 and offset -1.5, or
 * zero scales over random codes.
 * Every case also checks that a T-token call equals T one-token calls bit for
 * bit, and that output columns beyond n_rows (the ldy gap) are left untouched.
 */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* Reordered float32 sums differ by a few rounding errors of the partial sums,
 * growing like sqrt(n): |neon - ref| <= REORDER_ULPS * eps * sqrt(n) * sum |w x|.
 * A single mis-decoded weight moves the result by ~ sum / n, far above this. */
#define REORDER_ULPS 4.0
#define FLT_EPSILON_F32 1.1920928955078125e-07
#define ALIGNMENT 64
#define LDX_GAP 3 /* activations rows are n_in + LDX_GAP floats apart */
#define LDY_GAP 2 /* outputs rows are n_rows + LDY_GAP floats apart */

static const int64_t EDGE_ROWS[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 65, 257};
static const int64_t EDGE_BLOCKS[] = {1, 2, 3, 7, 8, 9};
/* F32/F16 row lengths that end in a partial 32-element block, or are one. */
static const int64_t FLOAT_ROW_LENGTHS[] = {1, 7, 16, 31, 33, 47, 64, 65, 100};
static const int64_t TOKEN_COUNTS[] = {1, 2, 3, 5};
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

typedef struct {
    int id;
    const char *name;
} weight_type;

static const weight_type TYPES[] = {
    {RWKVX_TYPE_F32, "FP32"}, {RWKVX_TYPE_F16, "FP16"}, {RWKVX_TYPE_Q8_0, "Q8_0"}, {RWKVX_TYPE_Q5_1, "Q5_1"},
    {RWKVX_TYPE_Q5_0, "Q5_0"}, {RWKVX_TYPE_Q4_1, "Q4_1"}, {RWKVX_TYPE_Q4_0, "Q4_0"},
};

enum fill_kind { FILL_EXACT, FILL_RANDOM, FILL_LOWEST, FILL_HIGHEST, FILL_ZERO_SCALE };
static const char *const FILL_NAMES[] = {"exact", "random", "lowest codes", "highest codes", "zero scales"};

static int n_cases, n_failed;

/* ---- deterministic random numbers (xorshift64*) ---------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint32_t next_u32(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545f4914f6cdd1du) >> 32);
}

static int rand_int(int lo, int hi) { return lo + (int)(next_u32() % (uint32_t)(hi - lo + 1)); } /* inclusive */
static float rand_uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next_u32() >> 8) / 16777216.0f; }

/* ---- weights ---------------------------------------------------------------- */

static int is_float_type(int type) { return type == RWKVX_TYPE_F32 || type == RWKVX_TYPE_F16; }

/* Byte offsets inside a block of a quantized type (-1: field absent) and its code bytes. */
typedef struct {
    int m, qh, qs, qs_len;
} block_layout;

static block_layout layout_of(int type) {
    switch (type) {
    case RWKVX_TYPE_Q4_0: return (block_layout){-1, -1, 2, 16};
    case RWKVX_TYPE_Q4_1: return (block_layout){2, -1, 4, 16};
    case RWKVX_TYPE_Q5_0: return (block_layout){-1, 2, 6, 16};
    case RWKVX_TYPE_Q5_1: return (block_layout){2, 4, 8, 16};
    default: return (block_layout){-1, -1, 2, 32}; /* Q8_0 */
    }
}

static void store_half(uint8_t *p, float f) {
    const rwkvx_half h = rwkvx_float_to_half(f);
    memcpy(p, &h, sizeof h);
}

static void fill_float_weights(int type, int64_t count, int kind, uint8_t *dst) {
    for (int64_t i = 0; i < count; i++) {
        const float v = kind == FILL_EXACT ? (float)rand_int(-8, 8) : rand_uniform(-1.0f, 1.0f);
        if (type == RWKVX_TYPE_F32)
            memcpy(dst + 4 * i, &v, 4);
        else
            store_half(dst + 2 * i, v);
    }
}

static void fill_block(int type, int kind, uint8_t *b) {
    const block_layout L = layout_of(type);
    const int q8 = type == RWKVX_TYPE_Q8_0;
    for (int j = 0; j < L.qs_len; j++) {
        uint8_t code = (uint8_t)next_u32();
        if (kind == FILL_LOWEST) code = q8 ? 0x80 : 0x00;   /* int8 -128; nibbles 0 */
        if (kind == FILL_HIGHEST) code = q8 ? 0x7f : 0xff;  /* int8 127; nibbles 15 */
        b[L.qs + j] = code;
    }
    if (L.qh >= 0)
        for (int j = 0; j < 4; j++)
            b[L.qh + j] = kind == FILL_LOWEST ? 0x00 : kind == FILL_HIGHEST ? 0xff : (uint8_t)next_u32();
    float d, m;
    switch (kind) {
    case FILL_EXACT: d = 1.0f; m = (float)rand_int(-4, 4); break;
    case FILL_RANDOM:
        d = rand_uniform(1e-3f, 0.1f) * (next_u32() & 1 ? 1.0f : -1.0f);
        m = rand_uniform(-0.2f, 0.2f);
        break;
    case FILL_ZERO_SCALE: d = 0.0f; m = -1.5f; break;
    default: d = 0.5f; m = -1.5f; break;
    }
    store_half(b, d);
    if (L.m >= 0) store_half(b + L.m, m);
}

static void fill_weights(int type, int64_t n_rows, int64_t n_in, int kind, uint8_t *dst) {
    if (is_float_type(type)) {
        fill_float_weights(type, n_rows * n_in, kind, dst);
        return;
    }
    const size_t bb = rwkvx_row_bytes(type, RWKVX_QK);
    for (int64_t b = 0; b < n_rows * n_in / RWKVX_QK; b++) fill_block(type, kind, dst + b * bb);
}

/* A buffer of n bytes starting `offset` bytes past a 64-byte boundary (as in a packed mmap). */
static uint8_t *misaligned_alloc(size_t n, int offset, uint8_t **to_free) {
    *to_free = malloc(n + ALIGNMENT + (size_t)offset);
    if (*to_free == NULL) { fprintf(stderr, "out of memory\n"); exit(2); }
    return *to_free + (ALIGNMENT - (uintptr_t)*to_free % ALIGNMENT) % ALIGNMENT + offset;
}

/* ---- one case --------------------------------------------------------------- */

typedef struct {
    const weight_type *type;
    int64_t n_rows, n_in, n_tokens;
    int kind, offset;
} matmul_case;

static void fail(const matmul_case *c, const char *what, int64_t t, int64_t o, double expected, double got,
                 double bound) {
    n_failed++;
    printf("FAIL %s %" PRId64 "x%" PRId64 " %s T=%" PRId64 " offset %d: %s at (token %" PRId64 ", row %" PRId64
           "): expected %.9g, got %.9g (bound %.3g)\n",
           c->type->name, c->n_rows, c->n_in, FILL_NAMES[c->kind], c->n_tokens, c->offset, what, t, o, expected, got,
           bound);
}

static void run(rwkvx_matmul_fn fn, const matmul_case *c, const uint8_t *w, const float *x, float *y) {
    const rwkvx_tensor tensor = {.data = w, .type = c->type->id, .n_in = (int32_t)c->n_in,
                                 .n_rows = (int32_t)c->n_rows};
    fn(&tensor, x, c->n_in + LDX_GAP, c->n_tokens, y, c->n_rows + LDY_GAP);
}

/* The NEON result of every case; kept to compare misaligned copies against the aligned one. */
static int check_case(const matmul_case *c, float *neon_out) {
    const int64_t T = c->n_tokens, R = c->n_rows, N = c->n_in, ldx = N + LDX_GAP, ldy = R + LDY_GAP;
    const size_t wbytes = rwkvx_row_bytes(c->type->id, (size_t)N) * (size_t)R;
    uint8_t *wfree, *w = misaligned_alloc(wbytes, c->offset, &wfree);
    fill_weights(c->type->id, R, N, c->kind, w);
    float *x = malloc(sizeof(float) * (size_t)(T * ldx)), *dq = malloc(sizeof(float) * (size_t)N);
    float *y_ref = malloc(sizeof(float) * (size_t)(T * ldy)), *y_neon = malloc(sizeof(float) * (size_t)(T * ldy));
    float *y_single = malloc(sizeof(float) * (size_t)ldy);
    if (!x || !dq || !y_ref || !y_neon || !y_single) { fprintf(stderr, "out of memory\n"); exit(2); }
    const int integer_x = c->kind != FILL_RANDOM;
    for (int64_t i = 0; i < T * ldx; i++) x[i] = integer_x ? (float)rand_int(-3, 3) : rand_uniform(-1.0f, 1.0f);
    const float sentinel = -12345.0f;
    for (int64_t i = 0; i < T * ldy; i++) y_ref[i] = y_neon[i] = sentinel;

    const int failed_before = n_failed;
    run(rwkvx_matmul_ref, c, w, x, y_ref);
    run(rwkvx_matmul_neon, c, w, x, y_neon);
    const rwkvx_tensor tensor = {.data = w, .type = c->type->id, .n_in = (int32_t)N, .n_rows = (int32_t)R};
    for (int64_t o = 0; o < R && n_failed == failed_before; o++) {
        rwkvx_dequant_row_ref(&tensor, o, dq);
        for (int64_t t = 0; t < T; t++) {
            double exact = 0.0, magnitude = 0.0;
            for (int64_t i = 0; i < N; i++) {
                exact += (double)dq[i] * x[t * ldx + i];
                magnitude += fabs((double)dq[i] * x[t * ldx + i]);
            }
            const float ref = y_ref[t * ldy + o], neon = y_neon[t * ldy + o];
            if (!is_float_type(c->type->id)) { /* same integer sums, same float operations */
                if (memcmp(&ref, &neon, sizeof ref) != 0) { fail(c, "neon differs from scalar", t, o, ref, neon, 0); break; }
            } else if (c->kind != FILL_RANDOM) { /* both kernels must give the exact sum */
                if (ref != (float)exact) { fail(c, "scalar reference inexact", t, o, exact, ref, 0.0); break; }
                if (neon != (float)exact) { fail(c, "neon inexact", t, o, exact, neon, 0.0); break; }
            } else {
                const double bound = REORDER_ULPS * FLT_EPSILON_F32 * sqrt((double)N) * magnitude;
                if (!(fabs((double)neon - ref) <= bound)) { fail(c, "neon vs scalar", t, o, ref, neon, bound); break; }
            }
        }
    }
    for (int64_t t = 0; t < T && n_failed == failed_before; t++) {
        for (int64_t o = R; o < ldy; o++)
            if (y_neon[t * ldy + o] != sentinel) { fail(c, "wrote past n_rows", t, o, sentinel, y_neon[t * ldy + o], 0); break; }
        if (T == 1) continue;
        /* Token t alone must give the same bits as inside the T-token call. */
        const matmul_case one = {c->type, R, N, 1, c->kind, c->offset};
        run(rwkvx_matmul_neon, &one, w, x + t * ldx, y_single);
        for (int64_t o = 0; o < R; o++)
            if (memcmp(&y_single[o], &y_neon[t * ldy + o], sizeof(float)) != 0) {
                fail(c, "one token alone differs from the T-token call", t, o, y_neon[t * ldy + o], y_single[o], 0);
                break;
            }
    }
    if (neon_out != NULL)
        for (int64_t t = 0; t < T; t++) memcpy(neon_out + t * R, y_neon + t * ldy, sizeof(float) * (size_t)R);
    n_cases++;
    free(wfree), free(x), free(dq), free(y_ref), free(y_neon), free(y_single);
    return n_failed == failed_before;
}

/* ---- suites ----------------------------------------------------------------- */

static void edge_sizes(void) {
    int i = 0;
    for (int ti = 0; ti < N_OF(TYPES); ti++) {
        const weight_type *type = &TYPES[ti];
        int64_t lengths[N_OF(EDGE_BLOCKS) + N_OF(FLOAT_ROW_LENGTHS)];
        int n_lengths = 0;
        for (int b = 0; b < N_OF(EDGE_BLOCKS); b++) lengths[n_lengths++] = EDGE_BLOCKS[b] * RWKVX_QK;
        if (is_float_type(type->id))
            for (int k = 0; k < N_OF(FLOAT_ROW_LENGTHS); k++) lengths[n_lengths++] = FLOAT_ROW_LENGTHS[k];
        for (int r = 0; r < N_OF(EDGE_ROWS); r++)
            for (int k = 0; k < n_lengths; k++)
                for (int kind = FILL_EXACT; kind <= FILL_RANDOM; kind++, i++) {
                    const matmul_case c = {type, EDGE_ROWS[r], lengths[k], TOKEN_COUNTS[i % N_OF(TOKEN_COUNTS)],
                                           kind, i % 4};
                    check_case(&c, NULL);
                }
    }
}

static void extreme_quants(void) {
    static const int64_t shapes[][2] = {{9, 7 * RWKVX_QK}, {17, 9 * RWKVX_QK}, {257, 2 * RWKVX_QK}};
    for (int ti = 0; ti < N_OF(TYPES); ti++) {
        if (is_float_type(TYPES[ti].id)) continue;
        for (int kind = FILL_LOWEST; kind <= FILL_ZERO_SCALE; kind++)
            for (int s = 0; s < N_OF(shapes); s++)
                for (int k = 0; k < N_OF(TOKEN_COUNTS); k++) {
                    const matmul_case c = {&TYPES[ti], shapes[s][0], shapes[s][1], TOKEN_COUNTS[k], kind, 1 + s};
                    check_case(&c, NULL);
                }
    }
}

/* The same weights at byte offsets 0..7 give identical bits. */
static void misalignment(void) {
    enum { ROWS = 17, N_IN = 9 * RWKVX_QK + 5, T = 3, MAX_OFFSET = 7 };
    static float aligned[T * ROWS], shifted[T * ROWS];
    for (int ti = 0; ti < N_OF(TYPES); ti++) {
        const int64_t n_in = is_float_type(TYPES[ti].id) ? N_IN : N_IN - 5; /* F32/F16: a partial block too */
        const uint64_t seed = rng;
        for (int offset = 0; offset <= MAX_OFFSET; offset++) {
            rng = seed; /* the same weights and activations at every offset */
            const matmul_case c = {&TYPES[ti], ROWS, n_in, T, FILL_RANDOM, offset};
            const int ok = check_case(&c, offset == 0 ? aligned : shifted);
            if (offset > 0 && ok && memcmp(aligned, shifted, sizeof aligned) != 0) {
                n_failed++;
                printf("FAIL %s offset %d: results differ from the aligned buffer's\n", TYPES[ti].name, offset);
            }
        }
    }
}

/* The aarch64 branch of dispatch.c: HWCAP says ASIMD, "neon" is compiled and is the default. */
static void dispatch(void) {
    n_cases++;
    const int failed_before = n_failed;
#define EXPECT(cond)                                                  \
    if (!(cond)) {                                                    \
        n_failed++;                                                   \
        printf("FAIL dispatch: expected %s\n", #cond);                \
    }
    EXPECT(rwkvx_isa_compiled("neon"));
    EXPECT(rwkvx_isa_supported("neon"));
    EXPECT(!rwkvx_isa_compiled("avx2") && !rwkvx_isa_compiled("avx512"));
    EXPECT(!rwkvx_isa_supported("avx2") && !rwkvx_isa_supported("avx512"));
    EXPECT(rwkvx_kernel_table_for("neon") != NULL && rwkvx_kernel_table_for("neon")->matmul == rwkvx_matmul_neon);
    EXPECT(rwkvx_kernel_table_for("neon") != NULL &&
           rwkvx_kernel_table_for("neon")->matmul_q8 == rwkvx_matmul_q8_neon);
    EXPECT(rwkvx_select_isa("avx2") == RWKVX_ISA_NOT_COMPILED);
    EXPECT(rwkvx_select_isa("sse9") == RWKVX_ISA_UNKNOWN);
    EXPECT(rwkvx_select_isa("scalar") == RWKVX_ISA_OK && strcmp(rwkvx_kernels->isa, "scalar") == 0);
    EXPECT(rwkvx_select_isa(NULL) == RWKVX_ISA_OK && strcmp(rwkvx_kernels->isa, "neon") == 0);
#undef EXPECT
    printf("dispatch: default %s; features:", rwkvx_kernels->isa);
    for (int i = 0; i < rwkvx_cpu_feature_count(); i++)
        if (rwkvx_cpu_feature_present(i)) printf(" %s", rwkvx_cpu_feature_name(i));
    printf("%s\n", n_failed == failed_before ? "" : " (FAILED)");
}

int main(void) {
    dispatch();
    edge_sizes();
    extreme_quants();
    misalignment();
    printf("checked %d cases, %d failed\n", n_cases, n_failed);
    return n_failed == 0 ? 0 : 1;
}
