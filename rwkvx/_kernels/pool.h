/* A persistent pool of worker threads that split a range of items (matrix rows).
 *
 * Created once per model; a run hands every thread (the caller included) one
 * contiguous share of [0, n_items), so each thread streams its own part of a
 * weight matrix; a worker that is late to a run has its share taken by the others. Workers spin briefly between runs (decoding issues hundreds
 * of small runs per token) and then sleep on a condition variable.
 *
 * Runs on one pool are serialized: a caller that finds the pool busy (another
 * Python thread using the same model) does its whole run itself instead of
 * waiting, so both make progress.
 */
#ifndef RWKVX_POOL_H
#define RWKVX_POOL_H

#include <stdint.h>

typedef struct rwkvx_pool rwkvx_pool;

/* Process items [begin, end) of a run. */
typedef void (*rwkvx_task_fn)(void *ctx, int64_t begin, int64_t end);

/* n_threads in total, the caller included (n_threads - 1 workers are started).
 * NULL if threads cannot be created or n_threads < 1. */
rwkvx_pool *rwkvx_pool_create(int32_t n_threads);
void rwkvx_pool_destroy(rwkvx_pool *pool);
int32_t rwkvx_pool_size(const rwkvx_pool *pool);

/* fn over [0, n_items) split in contiguous shares whose boundaries are multiples of
 * `grain` (e.g. 16 rows: separate cache lines of a float output). pool may be NULL. */
void rwkvx_pool_run(rwkvx_pool *pool, rwkvx_task_fn fn, void *ctx, int64_t n_items, int64_t grain);

/* The same, but fn may be called on many smaller ranges: a thread that finishes its share takes
 * over the end of another's, so no thread waits while one streams its part alone. For tasks whose
 * work splits anywhere at no cost (a product's rows), not for those that redo work per call. */
void rwkvx_pool_run_balanced(rwkvx_pool *pool, rwkvx_task_fn fn, void *ctx, int64_t n_items, int64_t grain);

#endif /* RWKVX_POOL_H */
