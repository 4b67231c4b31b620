/* Persistent worker pool (see pool.h). POSIX threads and C11 atomics.
 *
 * A run is published by bumping `generation` (release) after the job fields
 * are written. The items are cut into CHUNKS_PER_THREAD contiguous chunks per
 * thread, claimed in order from an atomic counter: on a machine where another
 * process keeps a worker from starting, the other threads take over its chunks
 * instead of waiting for it, and a worker that wakes late finds nothing left
 * and is not waited for. The counter is reset (release) before a run is published and
 * claimed with acquire, so whoever claims a chunk sees that run's job fields.
 * Each finished chunk increments `chunks_done` (release); the caller waits for
 * all of them (acquire), after which every output written is visible to it.
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Iterations a worker spins for the next run before sleeping: long enough to
 * cover the gap between the matrix products of one token (elementwise work). */
#define SPIN_LIMIT 20000
/* Chunks per thread. One: each thread streams one contiguous share of a matrix,
 * and a worker that is late to a run (preempted, asleep) still has its share
 * taken by the others. Measured on v7 1.5B-shaped runs of products, 2 threads:
 * 4 chunks per thread streamed 8-12% slower (every chunk restarts a stream
 * cold), and the finer balance they buy against a thread preempted mid-share
 * did not pay for it on a quiet machine. */
#define CHUNKS_PER_THREAD 1

typedef struct worker {
    rwkvx_pool *pool;
    pthread_t thread;
} worker;

struct rwkvx_pool {
    int32_t n_threads;
    int32_t n_started;
    worker *workers;
    pthread_mutex_t run_lock; /* held by the caller of a run in progress */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    atomic_uint_fast64_t generation;
    atomic_int chunks_done;
    atomic_int stop;
    /* the current run, valid while chunks are left */
    rwkvx_task_fn fn;
    void *ctx;
    int64_t n_items, grain;
    int32_t n_chunks;
    atomic_int next_chunk;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Chunk i of n_chunks of [0, n) with boundaries rounded to multiples of grain. */
static void chunk_bounds(int64_t n, int64_t grain, int32_t i, int32_t n_chunks, int64_t *begin, int64_t *end) {
    const int64_t units = (n + grain - 1) / grain;
    int64_t b = units * i / n_chunks * grain, e = units * (i + 1) / n_chunks * grain;
    *begin = b < n ? b : n;
    *end = e < n ? e : n;
}

/* Claim and run chunks until none is left. */
static void run_chunks(rwkvx_pool *p) {
    /* a worker may arrive after the run ended: next_chunk is then past n_chunks */
    for (;;) {
        const int32_t i = atomic_fetch_add_explicit(&p->next_chunk, 1, memory_order_acquire);
        if (i >= p->n_chunks) return;
        int64_t begin, end;
        chunk_bounds(p->n_items, p->grain, i, p->n_chunks, &begin, &end);
        if (begin < end) p->fn(p->ctx, begin, end);
        atomic_fetch_add_explicit(&p->chunks_done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    rwkvx_pool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_acquire)) {
            if (++spins < SPIN_LIMIT) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->sleep_lock);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->sleep_lock);
            pthread_mutex_unlock(&p->sleep_lock);
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
        seen = gen;
        run_chunks(p);
    }
}

static void stop_workers(rwkvx_pool *p) {
    pthread_mutex_lock(&p->sleep_lock);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->sleep_lock);
    for (int32_t i = 0; i < p->n_started; i++) pthread_join(p->workers[i].thread, NULL);
}

rwkvx_pool *rwkvx_pool_create(int32_t n_threads) {
    if (n_threads < 1) return NULL;
    rwkvx_pool *p = calloc(1, sizeof *p);
    if (p == NULL) return NULL;
    p->n_threads = n_threads;
    p->workers = calloc((size_t)n_threads, sizeof(worker));
    if (p->workers == NULL) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->sleep_lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->chunks_done, 0);
    atomic_init(&p->next_chunk, 0);
    atomic_init(&p->stop, 0);
    for (int32_t i = 1; i < n_threads; i++) {
        worker *w = &p->workers[p->n_started];
        w->pool = p;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            rwkvx_pool_destroy(p);
            return NULL;
        }
        p->n_started++;
    }
    return p;
}

void rwkvx_pool_destroy(rwkvx_pool *p) {
    if (p == NULL) return;
    stop_workers(p);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->sleep_lock);
    pthread_mutex_destroy(&p->run_lock);
    free(p->workers);
    free(p);
}

int32_t rwkvx_pool_size(const rwkvx_pool *p) { return p == NULL ? 1 : p->n_threads; }

void rwkvx_pool_run(rwkvx_pool *p, rwkvx_task_fn fn, void *ctx, int64_t n_items, int64_t grain) {
    if (n_items <= 0) return;
    if (p == NULL || p->n_threads == 1 || pthread_mutex_trylock(&p->run_lock) != 0) {
        fn(ctx, 0, n_items); /* no pool, or busy with another caller's run: do it all here */
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_items = n_items;
    p->grain = grain > 0 ? grain : 1;
    p->n_chunks = p->n_threads * CHUNKS_PER_THREAD;
    atomic_store_explicit(&p->chunks_done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->next_chunk, 0, memory_order_release);
    pthread_mutex_lock(&p->sleep_lock); /* no lost wake-up for a worker about to sleep */
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->sleep_lock);
    run_chunks(p);
    /* chunks other threads still run; yield now and then in case one was preempted */
    for (int spins = 1; atomic_load_explicit(&p->chunks_done, memory_order_acquire) != p->n_chunks; spins++) {
        if (spins % 1024 == 0)
            sched_yield();
        else
            cpu_relax();
    }
    pthread_mutex_unlock(&p->run_lock);
}
