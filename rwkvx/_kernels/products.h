/* The layer stack's matrix products, split by rows between the threads of the model's pool.
 *
 * A product is y = W x for T rows of activations, and optionally `then`: work each thread does on
 * the output rows it has just computed (an activation, the residual add, quantizing the next
 * product's input), so that no thread waits while one does it alone after the product. Quantized
 * weights take their activations quantized per block (rwkvx_q8_acts): done here, once for all rows,
 * unless the caller brings them quantized.
 *
 * Independent products can run as one group: one pool run over all their rows instead of one per
 * product. At one token of a small model the threads' meeting at the end of a run (the caller
 * waiting for the last piece, the workers for the next run) costs as much as the elementwise work
 * between the products. Each product's rows are split at the same multiples of the grain whether it
 * runs alone or in a group, and each slice is the same kernel on part of the matrix, so every output
 * element is computed exactly as without threads.
 */
#ifndef RWKVX_PRODUCTS_H
#define RWKVX_PRODUCTS_H

#include "kernels.h"

/* Rows per share boundary: 16 floats of a T=1 output are one cache line, so threads never write the
 * same line; and a packed matrix splits only between its groups of rows. */
#define RWKVX_ROW_GRAIN RWKVX_PACK_ROWS

/* Work a product's thread does on the output rows [begin, end) it has just computed. */
typedef void (*rwkvx_rows_fn)(void *ctx, int64_t begin, int64_t end);

typedef struct rwkvx_product_job {
    const rwkvx_tensor *w;
    const float *x; /* float activations (F32/F16 weights) */
    int64_t ldx, T;
    const rwkvx_q8_acts *xq; /* quantized activations (quantized weights), else NULL */
    float *y;
    int64_t ldy;
    rwkvx_rows_fn then; /* or NULL */
    void *then_ctx;
} rwkvx_product_job;

#define RWKVX_GROUP_MAX_PRODUCTS 8 /* v7's time mixing runs seven at once */

typedef struct rwkvx_product_group {
    int n;
    int64_t grain; /* rows per unit of the run */
    rwkvx_product_job products[RWKVX_GROUP_MAX_PRODUCTS];
    int64_t first_unit[RWKVX_GROUP_MAX_PRODUCTS + 1]; /* product i: units [first_unit[i], first_unit[i + 1]) */
    rwkvx_q8_acts own[RWKVX_GROUP_MAX_PRODUCTS];      /* inputs quantized by rwkvx_group_add */
    int64_t bytes;                                    /* of weights read, times tokens */
} rwkvx_product_group;

/* An empty group whose products split their rows at multiples of `grain`. */
void rwkvx_group_init(rwkvx_product_group *g, int64_t grain);

/* Add y = W x for T rows (x ldx floats apart, y ldy apart), then `then` (if not NULL) over the output
 * rows each thread computed. For quantized weights x is quantized here, unless xq brings it quantized
 * (then it must stay alive until rwkvx_group_run returns). */
void rwkvx_group_add(const rwkvx_model *m, rwkvx_product_group *g, const rwkvx_tensor *w, const float *x,
                     const rwkvx_q8_acts *xq, int64_t ldx, int64_t T, float *y, int64_t ldy, rwkvx_rows_fn then,
                     void *then_ctx);

/* Run every product of g (on the pool, unless they read too few bytes to be worth waking it), then free
 * the inputs it quantized. */
void rwkvx_group_run(const rwkvx_model *m, rwkvx_product_group *g);

/* One product as a group of one. */
void rwkvx_product_then(const rwkvx_model *m, const rwkvx_tensor *w, const float *x, const rwkvx_q8_acts *xq,
                        int64_t ldx, int64_t T, float *y, int64_t ldy, rwkvx_rows_fn then, void *then_ctx,
                        int64_t grain);
void rwkvx_product(const rwkvx_model *m, const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t T, float *y,
                   int64_t ldy);

/* buf allocated for T rows of a product's activations when w is quantized (the product then takes
 * them quantized), else NULL (it takes floats). Aborts when memory is exhausted: the layer code has no
 * error path, and like the kernels' row buffers only exhausted memory can fail here. */
rwkvx_q8_acts *rwkvx_product_input(rwkvx_q8_acts *buf, const rwkvx_tensor *w, int64_t T);

#endif /* RWKVX_PRODUCTS_H */
