/* The RWKV layer stack for T tokens at once ("sequence mode").
 *
 * Every per-token operation (norms, mixes, matrix products) runs over all T
 * rows at once, so each weight is read once per call, not once per token; the
 * recurrences (token shift, WKV) then walk the tokens in order. The math per
 * token is exactly that of one-token calls, so results do not depend on T.
 *
 * The same code also runs a batch: T rows that are each the next token of a
 * different sequence, every row with its own state (row_states below). The
 * products still read each weight once for all rows; only the recurrences
 * change, stepping each row once against its own state.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exp_poly.h"
#include "kernels.h"
#include "phase_times.h"
#include "pool.h"
#include "products.h"

#define RWKVX_MAX_CHUNK 128 /* tokens per internal chunk: bounds scratch memory */

#define RWKVX_SLOT_NAME(slot, name) name,
const char *const rwkvx_global_slot_names[RWKVX_N_GLOBAL_SLOTS] = {RWKVX_GLOBAL_SLOTS(RWKVX_SLOT_NAME)};
const char *const rwkvx_layer_slot_names[RWKVX_N_LAYER_SLOTS] = {RWKVX_LAYER_SLOTS(RWKVX_SLOT_NAME)};
#undef RWKVX_SLOT_NAME

/* Scratch rows for one chunk: every buffer holds T rows of its width. */
typedef struct scratch {
    float *a, *prev, *mix[6], *r, *k, *v, *g, *w, *alpha, *kk, *y, *out;
    float *hidden;  /* FFN hidden layer, or v6/v7 low-rank intermediates */
    float *hidden2; /* second low-rank intermediate */
    void *block;
} scratch;

static const float *vec(const rwkvx_layer *L, int slot) { return (const float *)L->t[slot].data; }
static const rwkvx_tensor *mat(const rwkvx_layer *L, int slot) { return &L->t[slot]; }

/* Quantize channels [c0, c1) (whole blocks) of T rows of x into xq, if not NULL: a thread's part. */
static void quantize_channels(rwkvx_q8_acts *xq, int weight_type, const float *x, int64_t ldx, int64_t T,
                              int64_t c0, int64_t c1) {
    if (xq != NULL) rwkvx_q8_acts_fill_blocks(xq, weight_type, x, ldx, 0, T, c0 / RWKVX_QK, c1 / RWKVX_QK);
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Floats per token of the low-rank intermediates of any layer: v6's widest (5*D or D2: one at a
 * time), v7's four (w, a, g, v) side by side, as its products run together (time_mix_v7). */
static int64_t lora_width(const rwkvx_model *m) {
    int64_t width = 0;
    for (int32_t i = 0; i < m->n_layer; i++) {
        const rwkvx_tensor *t = m->layers[i].t;
        width = max64(width, max64(t[RWKVX_MAA_W1].n_rows, t[RWKVX_DECAY_W1].n_rows));
        width = max64(width, (int64_t)t[RWKVX_W1].n_rows + t[RWKVX_A1].n_rows + t[RWKVX_G1].n_rows + t[RWKVX_V1].n_rows);
    }
    return width;
}

static int scratch_alloc(scratch *s, const rwkvx_model *m, int64_t T) {
    const int64_t C = m->n_embd;
    const int64_t hidden = max64(m->n_ffn, lora_width(m));
    const int64_t n_rows_c = 17; /* a, prev, 6 mixes, r, k, v, g, w, alpha, kk, y, out */
    const size_t total = (size_t)T * (size_t)(n_rows_c * C + 2 * hidden);
    float *p = malloc(total * sizeof(float));
    if (p == NULL) return RWKVX_ERR_ALLOC;
    s->block = p;
    float **rows_c[] = {&s->a, &s->prev, &s->mix[0], &s->mix[1], &s->mix[2], &s->mix[3], &s->mix[4],
                        &s->mix[5], &s->r, &s->k, &s->v, &s->g, &s->w, &s->alpha, &s->kk, &s->y, &s->out};
    for (size_t i = 0; i < sizeof rows_c / sizeof rows_c[0]; i++, p += T * C) *rows_c[i] = p;
    s->hidden = p;
    s->hidden2 = p + T * hidden;
    return RWKVX_OK;
}

/* Which state each row of a chunk uses. sequential: the rows are consecutive
 * tokens of one sequence, all using states[0]; otherwise row t is one token of
 * its own sequence, using states[t]. */
typedef struct row_states {
    float *const *states;
    int sequential;
} row_states;

/* The part of row t's state at float `offset`. */
static float *row_state(const row_states *rs, int64_t t, size_t offset) {
    return rs->states[rs->sequential ? 0 : t] + offset;
}

/* prev[t] = a[t-1], prev[0] = the stored shift state, which becomes a[T-1].
 * Independent rows: prev[t] = row t's shift state, which becomes a[t].
 * Channels [c0, c1) of each row only. */
static void token_shift_channels(const float *a, float *prev, int64_t T, int64_t C, const row_states *rs,
                                 size_t offset, int64_t c0, int64_t c1) {
    const size_t bytes = (size_t)(c1 - c0) * sizeof(float);
    for (int64_t t = 0; t < T; t++) {
        const float *from = rs->sequential && t > 0 ? a + (t - 1) * C : row_state(rs, t, offset);
        memcpy(prev + t * C + c0, from + c0, bytes);
    }
    if (!rs->sequential)
        for (int64_t t = 0; t < T; t++) memcpy(row_state(rs, t, offset) + c0, a + t * C + c0, bytes);
    else
        memcpy(row_state(rs, 0, offset) + c0, a + (T - 1) * C + c0, bytes);
}

static void token_shift(const float *a, float *prev, int64_t T, int64_t C, const row_states *rs, size_t offset) {
    token_shift_channels(a, prev, T, C, rs, offset, 0, C);
}

/* v4/v5 interpolation: out = a*mu + prev*(1-mu). */
static void lerp_mix(const float *a, const float *prev, const float *mu, int64_t T, int64_t C, float *out) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++) out[t * C + c] = a[t * C + c] * mu[c] + prev[t * C + c] * (1.0f - mu[c]);
}

/* v6/v7 interpolation: out = a + (prev - a) * mu. */
static void delta_mix(const float *a, const float *prev, const float *mu, int64_t T, int64_t C, float *out) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++) out[t * C + c] = a[t * C + c] + (prev[t * C + c] - a[t * C + c]) * mu[c];
}

static void add_rows(float *x, const float *d, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += d[i];
}

/* x += y over the rows a thread of a product has just computed (rwkvx_product_then): the residual add
 * split with the product instead of a pass by the calling thread alone after it. */
typedef struct residual_job {
    float *x;
    const float *y;
    int64_t C, T;
} residual_job;

static void add_residual_rows(void *ctx, int64_t begin, int64_t end) {
    const residual_job *j = ctx;
    for (int64_t t = 0; t < j->T; t++) add_rows(j->x + t * j->C + begin, j->y + t * j->C + begin, end - begin);
}

/* out = W in (in: T rows of W->n_in floats, or quantized in inq), then x += out: a layer's last
 * product of a block, whose output joins the residual stream x (T rows of W->n_rows). */
static void project_into_residual(const rwkvx_model *m, const rwkvx_tensor *w, const float *in,
                                  const rwkvx_q8_acts *inq, int64_t T, float *out, float *x) {
    residual_job residual = {x, out, w->n_rows, T};
    rwkvx_product_then(m, w, in, inq, w->n_in, T, out, w->n_rows, add_residual_rows, &residual, RWKVX_ROW_GRAIN);
}

/* ---- channel mixing (FFN) --------------------------------------------- */

/* Tokens from which elementwise work over rows is split between threads (every
 * element is computed by the same code whichever thread takes its row). */
#define PARALLEL_ROWS_MIN_TOKENS 8

/* h = max(h, 0)^2 for n floats. */
static void relu_square(float *h, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        /* relu as x > 0 ? x : 0 (NaN -> 0), decided on the bits: a branch per element is a coin toss
         * the predictor loses half the time, and the compiler vectorizes only this branch-free form */
        uint32_t bits;
        memcpy(&bits, &h[i], sizeof bits);
        const int positive = (int32_t)bits > 0 && bits <= 0x7f800000u; /* sign clear, not +0, not NaN */
        bits &= positive ? 0xffffffffu : 0u;
        float v;
        memcpy(&v, &bits, sizeof v);
        h[i] = v * v;
    }
}

/* The FFN's hidden layer after the key product, on the channels [begin, end) a thread
 * has just computed, for every token: relu squared, then (for quantized value
 * weights) quantized for the value product, so that no thread waits for one to
 * do it all between the two products. */
typedef struct hidden_job {
    float *h;
    int64_t n, T;
    rwkvx_q8_acts *xq; /* or NULL */
    int weight_type;
} hidden_job;

/* The key product's rows split at multiples of this: whole pairs of blocks, so threads
 * quantize separate cache lines of xq. */
#define HIDDEN_GRAIN (4 * RWKVX_QK)

static void hidden_rows(void *ctx, int64_t begin, int64_t end) {
    const hidden_job *j = ctx;
    for (int64_t t = 0; t < j->T; t++) relu_square(j->h + t * j->n + begin, end - begin);
    quantize_channels(j->xq, j->weight_type, j->h, j->n, j->T, begin, end);
}

/* Layer norm of rows [begin, end): norm_ref.c's per-token function, split by rows. */
typedef struct rows_job {
    const float *x;
    float *out;
    int64_t width;
    const float *weight, *bias;
} rows_job;

static void rows_task(void *ctx, int64_t begin, int64_t end) {
    const rows_job *j = ctx;
    const int64_t e0 = begin * j->width;
    rwkvx_layer_norm_ref(j->x + e0, j->out + e0, end - begin, j->width, j->weight, j->bias, 1e-5f);
}

static void layer_norm(const rwkvx_model *m, const float *x, float *out, int64_t T, int64_t C, const float *weight,
                       const float *bias) {
    rows_job job = {x, out, C, weight, bias};
    if (m->pool != NULL && T >= PARALLEL_ROWS_MIN_TOKENS)
        rwkvx_pool_run(m->pool, rows_task, &job, T, 1);
    else
        rows_task(&job, 0, T);
}

/* The low-rank products' nonlinearities, applied by each thread of the product to the outputs it has
 * just computed (rwkvx_product_then), so that none waits while one does them all: at one token, 96 libm tanhf
 * took 2.4 us of a v7 1.5B layer on the calling thread alone. */
enum { ACTIVATE_TANH, ACTIVATE_SIGMOID };

typedef struct activation_job {
    float *h;
    int64_t n, T; /* T rows of n outputs */
    int kind;
} activation_job;

static void activate_outputs(void *ctx, int64_t begin, int64_t end) {
    const activation_job *j = ctx;
    for (int64_t t = 0; t < j->T; t++) {
        float *h = j->h + t * j->n;
        if (j->kind == ACTIVATE_TANH)
            for (int64_t i = begin; i < end; i++) h[i] = tanhf(h[i]);
        else
            for (int64_t i = begin; i < end; i++) h[i] = rwkvx_sigmoid_poly(h[i]);
    }
}

/* h = f(W x) for T rows of x (ldx apart); h is T rows of w->n_rows. */
static void matmul_activated(const rwkvx_model *m, const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t T,
                             float *h, int kind) {
    activation_job job = {h, w->n_rows, T, kind};
    rwkvx_product_then(m, w, x, NULL, ldx, T, h, w->n_rows, activate_outputs, &job, RWKVX_ROW_GRAIN);
}

/* At few tokens (rows too few to share) the per-token work before a block of v7's products is split
 * between the threads by channels instead: each computes the layer norm of every token on its
 * channels (the statistics over all of them, the same floats), the token shift, the mixes, and
 * quantizes its blocks of the products' inputs, so that no thread waits while one does it all. The
 * vectors this reads (the mixes' weights above all) are cold, and two threads keep twice as many
 * reads in flight. */
#define CHANNEL_GRAIN (2 * RWKVX_QK) /* whole cache lines of the quantized blocks per thread */

static int v7_by_channels(const rwkvx_model *m, int64_t T) {
    return m->arch == RWKVX_ARCH_V7 && m->pool != NULL && T < PARALLEL_ROWS_MIN_TOKENS && m->n_embd % CHANNEL_GRAIN == 0;
}

/* Ask for floats [c0, c1) of p (to write them, if `write`) without waiting for them. */
static void prefetch_channels(const float *p, int64_t c0, int64_t c1, int write) {
    for (int64_t i = c0; i < c1; i += 16) {
        if (write)
            __builtin_prefetch(p + i, 1, 3);
        else
            __builtin_prefetch(p + i, 0, 3);
    }
}

/* Layer norm and token shift of channels [c0, c1) of every token: a = LN(x), prev = shifted a. Its cold
 * inputs (the norm's weights, the shift state) are asked for first, to arrive while the statistics of
 * all channels are computed. */
static void norm_and_shift_channels(const float *x, float *a, float *prev, int64_t T, int64_t C, const float *weight,
                                    const float *bias, const row_states *rs, size_t offset, int64_t c0, int64_t c1) {
    prefetch_channels(weight, c0, c1, 0);
    prefetch_channels(bias, c0, c1, 0);
    prefetch_channels(row_state(rs, 0, offset), c0, c1, 1);
    for (int64_t t = 0; t < T; t++) rwkvx_layer_norm_channels(x + t * C, a + t * C, C, c0, c1, weight, bias, 1e-5f);
    token_shift_channels(a, prev, T, C, rs, offset, c0, c1);
}

/* v7's FFN input at few tokens, split by channels (see v7_by_channels): layer norm, token shift, the
 * key's mix, and its blocks quantized for the key product (xq, or NULL for float weights). */
typedef struct ffn_input_job {
    const rwkvx_layer *L;
    scratch *s;
    const float *x;
    int64_t T, C;
    const row_states *rs;
    size_t shift_offset;
    rwkvx_q8_acts *xq;
    int xq_type;
} ffn_input_job;

static void v7_ffn_input_channels(void *ctx, int64_t c0, int64_t c1) {
    const ffn_input_job *j = ctx;
    scratch *s = j->s;
    const int64_t C = j->C;
    float *f = s->a, *q = s->prev, *xk = s->mix[0];
    const float *mu = vec(j->L, RWKVX_FFN_X_K);
    prefetch_channels(mu, c0, c1, 0); /* as in v7_mix_channels */
    prefetch_channels(xk, c0, c1, 1);
    norm_and_shift_channels(j->x, f, q, j->T, C, vec(j->L, RWKVX_LN2_W), vec(j->L, RWKVX_LN2_B), j->rs,
                            j->shift_offset, c0, c1);
    for (int64_t t = 0; t < j->T; t++) delta_mix(f + t * C + c0, q + t * C + c0, mu + c0, 1, c1 - c0, xk + t * C + c0);
    quantize_channels(j->xq, j->xq_type, xk, C, j->T, c0, c1);
}

static void channel_mix(const rwkvx_model *m, const rwkvx_layer *L, scratch *s, int64_t T, float *x,
                        const row_states *rs, size_t layer_offset) {
    const int64_t C = m->n_embd, F = m->n_ffn;
    float *f = s->a, *q = s->prev, *xk = s->mix[0], *xr = s->mix[1];
    const rwkvx_tensor *key = mat(L, RWKVX_FFN_K);
    rwkvx_q8_acts xk_q;
    ffn_input_job input = {L, s, x, T, C, rs, layer_offset, NULL, key->type}; /* ffn_xx: the layer's first C floats */
    if (v7_by_channels(m, T)) {
        input.xq = rwkvx_product_input(&xk_q, key, T);
        rwkvx_pool_run(m->pool, v7_ffn_input_channels, &input, C, CHANNEL_GRAIN);
    } else {
        layer_norm(m, x, f, T, C, vec(L, RWKVX_LN2_W), vec(L, RWKVX_LN2_B));
        token_shift(f, q, T, C, rs, layer_offset);
        switch (m->arch) {
        case RWKVX_ARCH_V7:
            delta_mix(f, q, vec(L, RWKVX_FFN_X_K), T, C, xk);
            break;
        case RWKVX_ARCH_V6:
            delta_mix(f, q, vec(L, RWKVX_FFN_MAA_K), T, C, xk);
            delta_mix(f, q, vec(L, RWKVX_FFN_MAA_R), T, C, xr);
            break;
        default:
            lerp_mix(f, q, vec(L, RWKVX_FFN_MIX_K), T, C, xk);
            lerp_mix(f, q, vec(L, RWKVX_FFN_MIX_R), T, C, xr);
        }
    }
    const rwkvx_tensor *value = mat(L, RWKVX_FFN_V);
    PHASE_END(FFN_INPUT);
    rwkvx_q8_acts hq;
    hidden_job hidden = {s->hidden, F, T, rwkvx_product_input(&hq, value, T), value->type};
    rwkvx_product_then(m, key, xk, input.xq, C, T, s->hidden, F, hidden_rows, &hidden, HIDDEN_GRAIN);
    if (input.xq != NULL) rwkvx_q8_acts_free(&xk_q);
    PHASE_END(FFN_KEY);
    if (m->arch == RWKVX_ARCH_V7) {
        project_into_residual(m, value, s->hidden, hidden.xq, T, s->out, x);
    } else { /* the receptance's gate comes between the value product and the residual */
        rwkvx_product_group value_and_gate;
        rwkvx_group_init(&value_and_gate, RWKVX_ROW_GRAIN);
        rwkvx_group_add(m, &value_and_gate, value, s->hidden, hidden.xq, F, T, s->out, C, NULL, NULL);
        rwkvx_group_add(m, &value_and_gate, mat(L, RWKVX_FFN_R), xr, NULL, C, T, s->r, C, NULL, NULL);
        rwkvx_group_run(m, &value_and_gate);
        for (int64_t i = 0; i < T * C; i++) s->out[i] *= rwkvx_sigmoid_poly(s->r[i]);
        add_rows(x, s->out, T * C);
    }
    if (hidden.xq != NULL) rwkvx_q8_acts_free(&hq);
    PHASE_END(FFN_VALUE);
}

/* ---- time mixing (attention) -------------------------------------------- */

/* Independent products of one input each, y_i = W_i x_i (T rows of C), as one pool run: at one token a
 * run's start and end cost about what a small model's product does. */
static void products_of_mixes(const rwkvx_model *m, int n, const rwkvx_tensor *const w[], float *const x[],
                              float *const y[], int64_t T) {
    const int64_t C = m->n_embd;
    rwkvx_product_group group;
    rwkvx_group_init(&group, RWKVX_ROW_GRAIN);
    for (int i = 0; i < n; i++) rwkvx_group_add(m, &group, w[i], x[i], NULL, C, T, y[i], C, NULL, NULL);
    rwkvx_group_run(m, &group);
}

/* v4-v6: the recurrence and what follows it before the output product, split between the threads by
 * channels (v4: each channel has its own state) or by heads (v5, v6: the group norm too is per head).
 * At one token the recurrence alone took 22 us of a v4 169M layer on the calling thread. Every channel
 * is computed by the same code whichever thread takes it. */
typedef struct recurrence_job {
    const rwkvx_model *m;
    const rwkvx_layer *L;
    scratch *s;
    int64_t T;
    const row_states *rs;
    size_t layer_offset;
    const float *u, *w; /* v5, v6: bonus and decay (w_stride floats per row, 0: the same for every row) */
    int64_t w_stride;
    int gate; /* v5.2, v6: y *= g sigmoid(g) after the group norm */
} recurrence_job;

static void v4_recurrence_channels(void *ctx, int64_t c0, int64_t c1) {
    const recurrence_job *j = ctx;
    const int64_t C = j->m->n_embd, T = j->T;
    scratch *s = j->s;
    const float *first = vec(j->L, RWKVX_ATT_FIRST) + c0, *decay = vec(j->L, RWKVX_ATT_DECAY) + c0;
    const int64_t steps = j->rs->sequential ? 1 : T, step_T = j->rs->sequential ? T : 1;
    for (int64_t t = 0; t < steps; t++) { /* one call over all rows, or one per independent row */
        float *st = row_state(j->rs, t, j->layer_offset) + c0;
        const int64_t row = t * C + c0;
        rwkvx_wkv4_ref(step_T, c1 - c0, C, s->k + row, s->v + row, first, decay, st + 2 * C, st + 3 * C, st + 4 * C,
                       s->y + row);
    }
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = t * C + c0; i < t * C + c1; i++) s->y[i] *= rwkvx_sigmoid_poly(s->r[i]);
}

static void v5_recurrence_heads(void *ctx, int64_t h0, int64_t h1) {
    const recurrence_job *j = ctx;
    const rwkvx_model *m = j->m;
    const int64_t C = m->n_embd, T = j->T, S = m->head_size, c0 = h0 * S, c1 = h1 * S;
    scratch *s = j->s;
    const int64_t steps = j->rs->sequential ? 1 : T, step_T = j->rs->sequential ? T : 1;
    for (int64_t t = 0; t < steps; t++) { /* one call over all rows, or one per independent row */
        float *heads = row_state(j->rs, t, j->layer_offset + 2 * (size_t)C) + h0 * S * S;
        const int64_t row = t * C + c0;
        rwkvx_wkv5_ref(step_T, h1 - h0, S, C, s->r + row, s->k + row, s->v + row, j->u + c0,
                       j->w + t * j->w_stride + c0, j->w_stride, heads, s->y + row);
    }
    const float *ln_w = vec(j->L, RWKVX_LNX_W), *ln_b = vec(j->L, RWKVX_LNX_B);
    for (int64_t t = 0; t < T; t++) {
        float *y = s->y + t * C;
        rwkvx_group_norm_ref(y + c0, y + c0, 1, h1 - h0, S, ln_w + c0, ln_b + c0, m->group_norm_eps);
        if (j->gate)
            for (int64_t i = t * C + c0; i < t * C + c1; i++) s->y[i] *= s->g[i] * rwkvx_sigmoid_poly(s->g[i]);
    }
}

static void time_mix_v4(const rwkvx_model *m, const rwkvx_layer *L, scratch *s, float *x, int64_t T, const row_states *rs,
                        size_t layer_offset) {
    const int64_t C = m->n_embd;
    float *xk = s->mix[0], *xv = s->mix[1], *xr = s->mix[2];
    lerp_mix(s->a, s->prev, vec(L, RWKVX_ATT_MIX_K), T, C, xk);
    lerp_mix(s->a, s->prev, vec(L, RWKVX_ATT_MIX_V), T, C, xv);
    lerp_mix(s->a, s->prev, vec(L, RWKVX_ATT_MIX_R), T, C, xr);
    const rwkvx_tensor *w[3] = {mat(L, RWKVX_ATT_K), mat(L, RWKVX_ATT_V), mat(L, RWKVX_ATT_R)};
    products_of_mixes(m, 3, w, (float *const[]){xk, xv, xr}, (float *const[]){s->k, s->v, s->r}, T);
    recurrence_job job = {m, L, s, T, rs, layer_offset, NULL, NULL, 0, 0};
    rwkvx_pool_run(m->pool, v4_recurrence_channels, &job, C, CHANNEL_GRAIN);
    project_into_residual(m, mat(L, RWKVX_ATT_O), s->y, NULL, T, s->out, x);
}

static void time_mix_v5(const rwkvx_model *m, const rwkvx_layer *L, scratch *s, float *x, int64_t T, const row_states *rs,
                        size_t layer_offset) {
    const int64_t C = m->n_embd;
    const int v52 = m->arch == RWKVX_ARCH_V5_2;
    float *xk = s->mix[0], *xv = s->mix[1], *xr = s->mix[2], *xg = s->mix[3];
    lerp_mix(s->a, s->prev, vec(L, RWKVX_ATT_MIX_K), T, C, xk);
    lerp_mix(s->a, s->prev, vec(L, RWKVX_ATT_MIX_V), T, C, xv);
    lerp_mix(s->a, s->prev, vec(L, RWKVX_ATT_MIX_R), T, C, xr);
    if (v52) lerp_mix(s->a, s->prev, vec(L, RWKVX_ATT_MIX_G), T, C, xg); /* v5.2's gate */
    const rwkvx_tensor *w[4] = {mat(L, RWKVX_ATT_K), mat(L, RWKVX_ATT_V), mat(L, RWKVX_ATT_R),
                                v52 ? mat(L, RWKVX_ATT_G) : NULL};
    products_of_mixes(m, v52 ? 4 : 3, w, (float *const[]){xk, xv, xr, xg}, (float *const[]){s->k, s->v, s->r, s->g},
                      T);
    const float *u = vec(L, v52 ? RWKVX_ATT_FAAAA : RWKVX_ATT_FIRST);
    recurrence_job job = {m, L, s, T, rs, layer_offset, u, vec(L, RWKVX_ATT_DECAY), 0, v52};
    rwkvx_pool_run(m->pool, v5_recurrence_heads, &job, m->n_head, 1);
    project_into_residual(m, mat(L, RWKVX_ATT_O), s->y, NULL, T, s->out, x);
}

static void time_mix_v6(const rwkvx_model *m, const rwkvx_layer *L, scratch *s, float *x, int64_t T, const row_states *rs,
                        size_t layer_offset) {
    const int64_t C = m->n_embd;
    const int64_t D = mat(L, RWKVX_MAA_W1)->n_rows / 5, D2 = mat(L, RWKVX_DECAY_W1)->n_rows;
    /* xxx = a + (prev - a) * maa_x, then five data-dependent mixes (w, k, v, r, g) */
    delta_mix(s->a, s->prev, vec(L, RWKVX_MAA_X), T, C, s->out);
    matmul_activated(m, mat(L, RWKVX_MAA_W1), s->out, C, T, s->hidden, ACTIVATE_TANH);
    static const int maa_slots[5] = {RWKVX_MAA_W, RWKVX_MAA_K, RWKVX_MAA_V, RWKVX_MAA_R, RWKVX_MAA_G};
    const rwkvx_tensor *w2 = mat(L, RWKVX_MAA_W2); /* 5 slabs of C rows, D inputs each */
    const size_t slab_bytes = (size_t)C * rwkvx_row_bytes(w2->type, (size_t)D);
    rwkvx_tensor slabs[5];
    rwkvx_product_group mixes; /* xc = W2[c] h_c, the five in one run */
    rwkvx_group_init(&mixes, RWKVX_ROW_GRAIN);
    for (int c = 0; c < 5; c++) {
        slabs[c] = (rwkvx_tensor){(const uint8_t *)w2->data + c * slab_bytes, w2->type, (int32_t)D, (int32_t)C,
                                  RWKVX_LAYOUT_ROWS};
        rwkvx_group_add(m, &mixes, &slabs[c], s->hidden + c * D, NULL, 5 * D, T, s->mix[c], C, NULL, NULL);
    }
    rwkvx_group_run(m, &mixes);
    for (int c = 0; c < 5; c++) {
        float *xc = s->mix[c];
        const float *maa = vec(L, maa_slots[c]);
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < C; i++) {
                const int64_t j = t * C + i;
                xc[j] = s->a[j] + (s->prev[j] - s->a[j]) * (maa[i] + xc[j]);
            }
    }
    float *xw = s->mix[0], *xk = s->mix[1], *xv = s->mix[2], *xr = s->mix[3], *xg = s->mix[4];
    /* r, k, v, g and the decay's first low-rank product in one run; w = exp(-exp(time_decay +
     * W_d2 tanh(W_d1 xw))), per token and channel */
    const rwkvx_tensor *decay_w1 = mat(L, RWKVX_DECAY_W1);
    activation_job tanh_w = {s->hidden2, D2, T, ACTIVATE_TANH};
    rwkvx_product_group inputs;
    rwkvx_group_init(&inputs, RWKVX_ROW_GRAIN);
    rwkvx_group_add(m, &inputs, mat(L, RWKVX_ATT_R), xr, NULL, C, T, s->r, C, NULL, NULL);
    rwkvx_group_add(m, &inputs, mat(L, RWKVX_ATT_K), xk, NULL, C, T, s->k, C, NULL, NULL);
    rwkvx_group_add(m, &inputs, mat(L, RWKVX_ATT_V), xv, NULL, C, T, s->v, C, NULL, NULL);
    rwkvx_group_add(m, &inputs, mat(L, RWKVX_ATT_G), xg, NULL, C, T, s->g, C, NULL, NULL);
    rwkvx_group_add(m, &inputs, decay_w1, xw, NULL, C, T, s->hidden2, D2, activate_outputs, &tanh_w);
    rwkvx_group_run(m, &inputs);
    rwkvx_product(m, mat(L, RWKVX_DECAY_W2), s->hidden2, D2, T, s->w, C);
    const float *decay = vec(L, RWKVX_ATT_DECAY);
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < C; i++) s->w[t * C + i] = rwkvx_exp_poly(-rwkvx_exp_poly(decay[i] + s->w[t * C + i]));
    recurrence_job job = {m, L, s, T, rs, layer_offset, vec(L, RWKVX_ATT_FAAAA), s->w, C, 1};
    rwkvx_pool_run(m->pool, v5_recurrence_heads, &job, m->n_head, 1);
    project_into_residual(m, mat(L, RWKVX_ATT_O), s->y, NULL, T, s->out, x);
}

/* v7 time mixing after the products, split by heads (pool tasks): a head's
 * channels of every vector are its own, and the products' outputs were split
 * between threads at the same head boundaries, so each thread mostly reads
 * what it has just written. Every element is computed by the same code
 * whichever thread or range of heads it falls in. */
typedef struct v7_heads_job {
    const rwkvx_model *m;
    const rwkvx_layer *L;
    scratch *s;
    int64_t T;
    int32_t layer;
    float *v_first;
    const row_states *rs;
    size_t heads_offset; /* of the layer's head states in a row's state */
    rwkvx_q8_acts *yq;   /* y quantized for the output product as each thread finishes its heads, or NULL */
    int yq_type;
} v7_heads_job;

/* Everything between the products and the recurrence (v7_gates_body.h); layer 0
 * keeps its values as every later layer's v_first. */
static void v7_gates_task(void *ctx, int64_t h0, int64_t h1) {
    const v7_heads_job *j = ctx;
    const rwkvx_layer *L = j->L;
    scratch *s = j->s;
    const int64_t C = j->m->n_embd, S = j->m->head_size;
    const int first = j->layer == 0;
    /* the layer's vectors are cold: ask for all of this range at once rather than one loop's at a time */
    const float *cold[] = {vec(L, RWKVX_W0), vec(L, RWKVX_A0), vec(L, RWKVX_K_K), vec(L, RWKVX_K_A),
                           first ? NULL : vec(L, RWKVX_V0), j->v_first};
    for (size_t v = 0; v < sizeof cold / sizeof cold[0]; v++)
        if (cold[v] != NULL) prefetch_channels(cold[v], h0 * S, h1 * S, 0);
    for (int64_t t = 0; t < j->T; t++) {
        const int64_t o = t * C;
        const rwkvx_v7_gates g = {vec(L, RWKVX_W0), vec(L, RWKVX_A0), vec(L, RWKVX_K_K), vec(L, RWKVX_K_A),
                                  first ? NULL : vec(L, RWKVX_V0), j->v_first + o, s->out + o,
                                  s->w + o, s->alpha + o, s->k + o, s->v + o, s->kk + o, s->mix[0] + o,
                                  s->mix[1] + o};
        if (first) memcpy(j->v_first + o + h0 * S, s->v + o + h0 * S, (size_t)((h1 - h0) * S) * sizeof(float));
        rwkvx_kernels->v7_gates(h0, h1, S, &g);
    }
}

/* The recurrence, then per head: group norm, y += (sum_j r k r_k) v, gate. */
static void v7_wkv_task(void *ctx, int64_t h0, int64_t h1) {
    const v7_heads_job *j = ctx;
    const rwkvx_layer *L = j->L;
    scratch *s = j->s;
    const int64_t H = j->m->n_head, S = j->m->head_size, C = H * S;
    const int64_t steps = j->rs->sequential ? 1 : j->T, step_T = j->rs->sequential ? j->T : 1;
    const float *a = s->mix[0], *b = s->mix[1]; /* WKV's a and b (v7_gates_task) */
    for (int64_t t = 0; t < steps; t++) { /* one call over all rows, or one per independent row */
        const int64_t o = t * C;
        rwkvx_kernels->wkv7_heads(step_T, H, S, h0, h1, s->r + o, s->w + o, s->k + o, s->v + o, a + o, b + o,
                                  row_state(j->rs, t, j->heads_offset), s->y + o);
    }
    const float *ln_w = vec(L, RWKVX_LNX_W), *ln_b = vec(L, RWKVX_LNX_B), *r_k = vec(L, RWKVX_R_K);
    for (int64_t t = 0; t < j->T; t++)
        for (int64_t h = h0; h < h1; h++) {
            const int64_t c = h * S, o = t * C + c;
            float *y = s->y + o;
            rwkvx_group_norm_ref(y, y, 1, 1, S, ln_w + c, ln_b + c, j->m->group_norm_eps);
            float bonus = 0.0f;
            for (int64_t i = 0; i < S; i++) bonus += s->r[o + i] * s->k[o + i] * r_k[c + i];
            for (int64_t i = 0; i < S; i++) y[i] = (y[i] + bonus * s->v[o + i]) * s->g[o + i];
        }
    quantize_channels(j->yq, j->yq_type, s->y, C, j->T, h0 * S, h1 * S);
}

/* Heads [h0, h1) from the products' outputs to y: the gates, then the recurrence. A head needs only
 * its own channels of both, so one run does the two. */
static void v7_heads_task(void *ctx, int64_t h0, int64_t h1) {
    v7_gates_task(ctx, h0, h1);
    v7_wkv_task(ctx, h0, h1);
}

/* The six token-shift mixes of v7, for tokens [t0, t1). */
typedef struct v7_mix_job {
    const rwkvx_layer *L;
    scratch *s;
    int64_t C, T;
    /* for v7_mix_channels: the layer's input, where its shift state is, and xr, xk, xv quantized
     * for their products (or NULL) */
    const float *x;
    const row_states *rs;
    size_t shift_offset;
    rwkvx_q8_acts *xq[3];
    int xq_type[3];
} v7_mix_job;

static void v7_mix_task(void *ctx, int64_t t0, int64_t t1) {
    const v7_mix_job *j = ctx;
    scratch *s = j->s;
    const int64_t C = j->C, e0 = t0 * C; /* rows [t0, t1) start at element e0 */
    const float *x_rwkvag = vec(j->L, RWKVX_X_RWKVAG);
    for (int c = 0; c < 6; c++) delta_mix(s->a + e0, s->prev + e0, x_rwkvag + c * C, t1 - t0, C, s->mix[c] + e0);
}

static void v7_mix_channels(void *ctx, int64_t c0, int64_t c1) {
    const v7_mix_job *j = ctx;
    scratch *s = j->s;
    const int64_t C = j->C;
    const float *x_rwkvag = vec(j->L, RWKVX_X_RWKVAG);
    /* the mixes' weights are cold and their outputs lines the products last read: ask for both now, so
     * that they arrive while the layer norm's statistics are computed */
    for (int c = 0; c < 6; c++) {
        prefetch_channels(x_rwkvag + c * C, c0, c1, 0);
        prefetch_channels(s->mix[c], c0, c1, 1);
    }
    norm_and_shift_channels(j->x, s->a, s->prev, j->T, C, vec(j->L, RWKVX_LN1_W), vec(j->L, RWKVX_LN1_B), j->rs,
                            j->shift_offset, c0, c1);
    for (int c = 0; c < 6; c++)
        for (int64_t t = 0; t < j->T; t++)
            delta_mix(s->a + t * C + c0, s->prev + t * C + c0, x_rwkvag + c * C + c0, 1, c1 - c0,
                      s->mix[c] + t * C + c0);
    const float *quantized[3] = {s->mix[0], s->mix[2], s->mix[3]}; /* xr, xk, xv */
    for (int q = 0; q < 3; q++) quantize_channels(j->xq[q], j->xq_type[q], quantized[q], C, j->T, c0, c1);
}

/* x: the layer's input; its layer norm and token shift are done here when v7_by_channels (else by
 * the caller, into s->a and s->prev). */
static void time_mix_v7(const rwkvx_model *m, const rwkvx_layer *L, int32_t layer, scratch *s, float *x,
                        int64_t T, const row_states *rs, size_t layer_offset, float *v_first) {
    const int64_t C = m->n_embd, H = m->n_head;
    const rwkvx_tensor *rkv[3] = {mat(L, RWKVX_ATT_R), mat(L, RWKVX_ATT_K), mat(L, RWKVX_ATT_V)};
    v7_mix_job mix = {L, s, C, T, x, rs, layer_offset + (size_t)C, {NULL, NULL, NULL},
                      {rkv[0]->type, rkv[1]->type, rkv[2]->type}}; /* att_xx: the layer's second C floats */
    rwkvx_q8_acts rkv_q[3];
    if (v7_by_channels(m, T)) {
        for (int q = 0; q < 3; q++) mix.xq[q] = rwkvx_product_input(&rkv_q[q], rkv[q], T);
        rwkvx_pool_run(m->pool, v7_mix_channels, &mix, C, CHANNEL_GRAIN);
    } else if (m->pool != NULL && T >= PARALLEL_ROWS_MIN_TOKENS) {
        rwkvx_pool_run(m->pool, v7_mix_task, &mix, T, 1);
    } else {
        v7_mix_task(&mix, 0, T);
    }
    PHASE_END(MIX);
    float *xr = s->mix[0], *xw = s->mix[1], *xk = s->mix[2], *xv = s->mix[3], *xa = s->mix[4], *xg = s->mix[5];
    /* every product whose input is a mix in one run; then, in another, the second products of the low-rank
     * pairs (w = W2 tanh(W1 xw), alpha = A2 A1 xa, g = G2 sigmoid(G1 xg), v's V2 V1 xv), each reading its
     * own part of s->hidden; then the per-head work */
    const rwkvx_tensor *w1 = mat(L, RWKVX_W1), *a1 = mat(L, RWKVX_A1), *g1 = mat(L, RWKVX_G1), *v1 = mat(L, RWKVX_V1);
    const int64_t Dw = w1->n_rows, Da = a1->n_rows, Dg = g1->n_rows, Dv = v1->n_rows;
    float *hw = s->hidden, *ha = hw + T * Dw, *hg = ha + T * Da, *hv = hg + T * Dg;
    activation_job tanh_w = {hw, Dw, T, ACTIVATE_TANH}, sigmoid_g = {hg, Dg, T, ACTIVATE_SIGMOID};
    rwkvx_product_group inputs;
    rwkvx_group_init(&inputs, RWKVX_ROW_GRAIN);
    rwkvx_group_add(m, &inputs, rkv[0], xr, mix.xq[0], C, T, s->r, C, NULL, NULL);
    rwkvx_group_add(m, &inputs, rkv[1], xk, mix.xq[1], C, T, s->k, C, NULL, NULL);
    rwkvx_group_add(m, &inputs, rkv[2], xv, mix.xq[2], C, T, s->v, C, NULL, NULL);
    rwkvx_group_add(m, &inputs, w1, xw, NULL, C, T, hw, Dw, activate_outputs, &tanh_w);
    rwkvx_group_add(m, &inputs, a1, xa, NULL, C, T, ha, Da, NULL, NULL);
    rwkvx_group_add(m, &inputs, g1, xg, NULL, C, T, hg, Dg, activate_outputs, &sigmoid_g);
    if (layer > 0) rwkvx_group_add(m, &inputs, v1, xv, NULL, C, T, hv, Dv, NULL, NULL); /* layer 0's v is v_first */
    rwkvx_group_run(m, &inputs);
    for (int q = 0; q < 3; q++)
        if (mix.xq[q] != NULL) rwkvx_q8_acts_free(&rkv_q[q]);
    PHASE_END(INPUT_PRODUCTS);
    rwkvx_product_group low_rank;
    rwkvx_group_init(&low_rank, RWKVX_ROW_GRAIN);
    rwkvx_group_add(m, &low_rank, mat(L, RWKVX_W2), hw, NULL, Dw, T, s->w, C, NULL, NULL);
    rwkvx_group_add(m, &low_rank, mat(L, RWKVX_A2), ha, NULL, Da, T, s->alpha, C, NULL, NULL);
    rwkvx_group_add(m, &low_rank, mat(L, RWKVX_G2), hg, NULL, Dg, T, s->g, C, NULL, NULL);
    if (layer > 0) rwkvx_group_add(m, &low_rank, mat(L, RWKVX_V2), hv, NULL, Dv, T, s->out, C, NULL, NULL);
    rwkvx_group_run(m, &low_rank);
    PHASE_END(LOW_RANK_PRODUCTS);
    const rwkvx_tensor *output = mat(L, RWKVX_ATT_O);
    rwkvx_q8_acts yq;
    v7_heads_job heads = {m, L, s, T, layer, v_first, rs, layer_offset + 2 * (size_t)C, NULL, output->type};
    /* threads quantize y for the output product head by head: each head whole blocks, and whole cache lines of
     * them (two blocks at least) so threads never share one */
    if (m->head_size % (2 * RWKVX_QK) == 0) heads.yq = rwkvx_product_input(&yq, output, T);
    rwkvx_pool_run(m->pool, v7_heads_task, &heads, H, 1);
    PHASE_END(HEADS);
    project_into_residual(m, output, s->y, heads.yq, T, s->out, x);
    if (heads.yq != NULL) rwkvx_q8_acts_free(&yq);
    PHASE_END(OUTPUT_PRODUCT);
}

/* ---- the stack ---------------------------------------------------------- */

size_t rwkvx_state_floats_per_layer(const rwkvx_model *m) {
    const size_t C = (size_t)m->n_embd;
    return m->arch == RWKVX_ARCH_V4 ? 5 * C : (2 + (size_t)m->head_size) * C;
}

void rwkvx_init_state(const rwkvx_model *m, float *state) {
    const size_t per_layer = rwkvx_state_floats_per_layer(m), C = (size_t)m->n_embd;
    memset(state, 0, per_layer * (size_t)m->n_layer * sizeof(float));
    if (m->arch == RWKVX_ARCH_V4)
        for (int32_t i = 0; i < m->n_layer; i++)
            for (size_t c = 0; c < C; c++) state[i * per_layer + 4 * C + c] = -1e30f;
}

int rwkvx_embed(const rwkvx_model *m, const int32_t *tokens, int64_t T, float *x) {
    const int64_t C = m->n_embd;
    for (int64_t t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= m->n_vocab) return RWKVX_ERR_TOKEN;
    for (int64_t t = 0; t < T; t++) rwkvx_kernels->dequant_row(&m->globals[RWKVX_EMB], tokens[t], x + t * C);
    rwkvx_layer_norm_ref(x, x, T, C, m->globals[RWKVX_LN0_W].data, m->globals[RWKVX_LN0_B].data, 1e-5f);
    return RWKVX_OK;
}

static int run_layers_chunk(const rwkvx_model *m, int32_t begin, int32_t end, float *x, float *v_first,
                            int64_t T, const row_states *rs, scratch *s) {
    const int64_t C = m->n_embd;
    const size_t per_layer = rwkvx_state_floats_per_layer(m);
    for (int32_t i = begin; i < end; i++) {
        const rwkvx_layer *L = &m->layers[i];
        const size_t st = (size_t)i * per_layer; /* the layer's [ffn_xx, att_xx, ...] in a row's state */
        PHASE_START();
        if (!v7_by_channels(m, T)) { /* else time_mix_v7 does them */
            layer_norm(m, x, s->a, T, C, vec(L, RWKVX_LN1_W), vec(L, RWKVX_LN1_B));
            token_shift(s->a, s->prev, T, C, rs, st + (size_t)C);
        }
        switch (m->arch) {
        case RWKVX_ARCH_V4: time_mix_v4(m, L, s, x, T, rs, st); break;
        case RWKVX_ARCH_V5_1:
        case RWKVX_ARCH_V5_2: time_mix_v5(m, L, s, x, T, rs, st); break;
        case RWKVX_ARCH_V6: time_mix_v6(m, L, s, x, T, rs, st); break;
        case RWKVX_ARCH_V7: time_mix_v7(m, L, i, s, x, T, rs, st, v_first); break;
        default: return RWKVX_ERR_ARGUMENT;
        }
        if (m->arch != RWKVX_ARCH_V7) PHASE_END(TIME_MIX);
        channel_mix(m, L, s, T, x, rs, st);
    }
    return RWKVX_OK;
}

int rwkvx_run_layers(const rwkvx_model *m, int32_t begin, int32_t end, float *x, float *v_first,
                     int64_t T, float *state) {
    if (begin < 0 || end > m->n_layer || begin > end || T <= 0) return RWKVX_ERR_ARGUMENT;
    scratch s;
    if (scratch_alloc(&s, m, T) != RWKVX_OK) return RWKVX_ERR_ALLOC;
    const row_states rs = {&state, 1};
    const int status = run_layers_chunk(m, begin, end, x, v_first, T, &rs, &s);
    free(s.block);
    return status;
}

int rwkvx_head(const rwkvx_model *m, const float *x, int64_t T, float *logits) {
    const int64_t C = m->n_embd;
    PHASE_START();
    float *normed = malloc((size_t)(T * C) * sizeof(float));
    if (normed == NULL) return RWKVX_ERR_ALLOC;
    rwkvx_layer_norm_ref(x, normed, T, C, m->globals[RWKVX_LN_OUT_W].data, m->globals[RWKVX_LN_OUT_B].data, 1e-5f);
    rwkvx_product(m, &m->globals[RWKVX_HEAD], normed, C, T, logits, m->n_vocab);
    free(normed);
    PHASE_END(HEAD);
    return RWKVX_OK;
}

/* Embedding, all layers and the head over n_rows rows, in chunks of at most
 * RWKVX_MAX_CHUNK rows. sequential: the rows are one sequence's tokens, all on
 * states[0]; otherwise row t is a token of its own sequence, on states[t]. */
static int forward_rows(const rwkvx_model *m, const int32_t *tokens, int64_t n_rows, float *const *states,
                        int sequential, float *logits, int logits_mode) {
    if (n_rows <= 0) return RWKVX_ERR_ARGUMENT;
    for (int64_t t = 0; t < n_rows; t++)
        if (tokens[t] < 0 || tokens[t] >= m->n_vocab) return RWKVX_ERR_TOKEN;
    const int64_t C = m->n_embd;
    const int64_t chunk = n_rows < RWKVX_MAX_CHUNK ? n_rows : RWKVX_MAX_CHUNK;
    scratch s;
    if (scratch_alloc(&s, m, chunk) != RWKVX_OK) return RWKVX_ERR_ALLOC;
    float *x = malloc((size_t)(2 * chunk * C) * sizeof(float));
    if (x == NULL) {
        free(s.block);
        return RWKVX_ERR_ALLOC;
    }
    float *v_first = x + chunk * C;
    int status = RWKVX_OK;
    for (int64_t t0 = 0; t0 < n_rows && status == RWKVX_OK; t0 += chunk) {
        const int64_t T = n_rows - t0 < chunk ? n_rows - t0 : chunk;
        const row_states rs = {sequential ? states : states + t0, sequential};
        PHASE_START();
        status = rwkvx_embed(m, tokens + t0, T, x);
        PHASE_END(EMBED);
        if (status == RWKVX_OK) status = run_layers_chunk(m, 0, m->n_layer, x, v_first, T, &rs, &s);
        if (status != RWKVX_OK) break;
        if (logits_mode == RWKVX_LOGITS_ALL)
            status = rwkvx_head(m, x, T, logits + t0 * m->n_vocab);
        else if (logits_mode == RWKVX_LOGITS_LAST && t0 + T == n_rows)
            status = rwkvx_head(m, x + (T - 1) * C, 1, logits);
    }
    free(x);
    free(s.block);
    return status;
}

int rwkvx_forward(const rwkvx_model *m, const int32_t *tokens, int64_t n_tokens, float *state,
                  float *logits, int logits_mode) {
    return forward_rows(m, tokens, n_tokens, &state, 1, logits, logits_mode);
}

int rwkvx_forward_batch(const rwkvx_model *m, const int32_t *tokens, int64_t n_seq, float *const *states,
                        float *logits) {
    if (n_seq <= 0 || states == NULL) return RWKVX_ERR_ARGUMENT;
    for (int64_t b = 0; b < n_seq; b++)
        if (states[b] == NULL) return RWKVX_ERR_ARGUMENT;
    return forward_rows(m, tokens, n_seq, states, 0, logits, logits == NULL ? RWKVX_LOGITS_NONE : RWKVX_LOGITS_ALL);
}
