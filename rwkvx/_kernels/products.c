/* The layer stack's matrix products on the model's pool (see products.h). */
#include "products.h"

#include <stdlib.h>

#include "pool.h"

/* Tokens from which quantizing the activations is split between threads (each token's row is
 * quantized by the same code whichever thread takes it). */
#define PARALLEL_QUANTIZE_MIN_TOKENS 8

/* Rows [begin, end) of a product: the same kernel on a slice of the matrix. */
static void product_rows(const rwkvx_product_job *p, int64_t begin, int64_t end) {
    const rwkvx_tensor part = rwkvx_tensor_rows(p->w, begin, end);
    if (part.layout == rwkvx_kernels->packed_layout)
        rwkvx_kernels->matmul_q8_packed(&part, p->xq, p->y + begin, p->ldy);
    else if (rwkvx_layout_is_packed(part.layout)) /* packed for another level: only the reference reads any */
        rwkvx_matmul_q8_packed_ref(&part, p->xq, p->y + begin, p->ldy);
    else if (p->xq != NULL)
        rwkvx_kernels->matmul_q8(&part, p->xq, p->y + begin, p->ldy);
    else
        rwkvx_kernels->matmul(&part, p->x, p->ldx, p->T, p->y + begin, p->ldy);
    if (p->then != NULL) p->then(p->then_ctx, begin, end);
}

typedef struct quantize_job {
    rwkvx_q8_acts *xq;
    int weight_type;
    const float *x;
    int64_t ldx;
} quantize_job;

static void quantize_rows(void *ctx, int64_t begin, int64_t end) {
    const quantize_job *q = ctx;
    rwkvx_q8_acts_fill(q->xq, q->weight_type, q->x, q->ldx, begin, end);
}

rwkvx_q8_acts *rwkvx_product_input(rwkvx_q8_acts *buf, const rwkvx_tensor *w, int64_t T) {
    if (!rwkvx_type_is_quantized(w->type)) return NULL;
    if (rwkvx_q8_acts_alloc(buf, T, w->n_in, rwkvx_q8_acts_want_lanes(w)) != RWKVX_OK) abort();
    return buf;
}

void rwkvx_group_init(rwkvx_product_group *g, int64_t grain) {
    g->n = 0;
    g->grain = grain > 0 ? grain : 1;
    g->first_unit[0] = 0;
    g->bytes = 0;
}

void rwkvx_group_add(const rwkvx_model *m, rwkvx_product_group *g, const rwkvx_tensor *w, const float *x,
                     const rwkvx_q8_acts *xq, int64_t ldx, int64_t T, float *y, int64_t ldy, rwkvx_rows_fn then,
                     void *then_ctx) {
    if (g->n == RWKVX_GROUP_MAX_PRODUCTS) abort(); /* a caller's bug: every group in the stack has a fixed size */
    const int i = g->n++;
    if (xq == NULL && rwkvx_product_input(&g->own[i], w, T) != NULL) {
        quantize_job q = {&g->own[i], w->type, x, ldx};
        if (m->pool != NULL && T >= PARALLEL_QUANTIZE_MIN_TOKENS)
            rwkvx_pool_run(m->pool, quantize_rows, &q, T, 1);
        else
            quantize_rows(&q, 0, T);
        xq = &g->own[i];
    }
    g->products[i] = (rwkvx_product_job){w, x, ldx, T, xq, y, ldy, then, then_ctx};
    g->first_unit[i + 1] = g->first_unit[i] + (w->n_rows + g->grain - 1) / g->grain;
    g->bytes += (int64_t)rwkvx_row_bytes(w->type, (size_t)w->n_in) * w->n_rows * T;
}

/* Units [unit_begin, unit_end) of a group's run: the slices of the products they cover. */
static void group_units(void *ctx, int64_t unit_begin, int64_t unit_end) {
    const rwkvx_product_group *g = ctx;
    for (int i = 0; i < g->n; i++) {
        const int64_t first = g->first_unit[i], next = g->first_unit[i + 1];
        const int64_t begin = unit_begin > first ? unit_begin : first, end = unit_end < next ? unit_end : next;
        if (begin >= end) continue;
        const int64_t n_rows = g->products[i].w->n_rows, row_end = (end - first) * g->grain;
        product_rows(&g->products[i], (begin - first) * g->grain, row_end < n_rows ? row_end : n_rows);
    }
}

void rwkvx_group_run(const rwkvx_model *m, rwkvx_product_group *g) {
    const int64_t units = g->first_unit[g->n];
    if (m->pool != NULL && g->bytes >= m->parallel_min_bytes)
        rwkvx_pool_run_balanced(m->pool, group_units, g, units, 1);
    else
        group_units(g, 0, units);
    for (int i = 0; i < g->n; i++)
        if (g->products[i].xq == &g->own[i]) rwkvx_q8_acts_free(&g->own[i]);
}

void rwkvx_product_then(const rwkvx_model *m, const rwkvx_tensor *w, const float *x, const rwkvx_q8_acts *xq,
                        int64_t ldx, int64_t T, float *y, int64_t ldy, rwkvx_rows_fn then, void *then_ctx,
                        int64_t grain) {
    rwkvx_product_group g;
    rwkvx_group_init(&g, grain);
    rwkvx_group_add(m, &g, w, x, xq, ldx, T, y, ldy, then, then_ctx);
    rwkvx_group_run(m, &g);
}

void rwkvx_product(const rwkvx_model *m, const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t T, float *y,
                   int64_t ldy) {
    rwkvx_product_then(m, w, x, NULL, ldx, T, y, ldy, NULL, NULL, RWKVX_ROW_GRAIN);
}
