/* Persistent worker pool (see pool.h). POSIX threads and C11 atomics.
 *
 * A run is published by bumping `generation` (release) after the job fields
 * are written. The items, in units of `grain`, are claimed in contiguous
 * chunks from an atomic counter, each chunk a fixed fraction of what is left
 * (guided scheduling): the first chunks are long streams of rows, the last
 * ones a unit or two, so threads that started late (a worker waking up) or
 * were preempted are covered by the others and all finish within about one
 * unit of each other. The counter is reset (release) before a run is published
 * and claimed with acquire, so whoever claims a chunk sees that run's job
 * fields. Each finished chunk adds its units to `units_done` (release); the
 * caller waits for all of them (acquire), after which every output written is
 * visible to it.
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Iterations a worker spins for the next run before sleeping: long enough to
 * cover the gap between the matrix products of one token (elementwise work). */
#define SPIN_LIMIT 20000
/* A chunk takes 1 / (GUIDED_SHARE * n_threads) of the units left: the first
 * chunks stay long contiguous streams, and what is left when one ends is
 * always enough for the other threads to finish together. */
#define GUIDED_SHARE 2

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
    atomic_int_fast64_t units_done;
    atomic_int stop;
    /* the current run, valid while units are left */
    rwkvx_task_fn fn;
    void *ctx;
    int64_t n_items, grain, n_units;
    atomic_int_fast64_t next_unit;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Claim and run chunks until none is left. */
static void run_chunks(rwkvx_pool *p) {
    /* a worker may arrive after the run ended: next_unit is then at n_units */
    int64_t first = atomic_load_explicit(&p->next_unit, memory_order_acquire);
    for (;;) {
        int64_t size;
        do {
            if (first >= p->n_units) return;
            size = (p->n_units - first) / (GUIDED_SHARE * p->n_threads);
            if (size < 1) size = 1;
        } while (!atomic_compare_exchange_weak_explicit(&p->next_unit, &first, first + size, memory_order_acquire,
                                                        memory_order_acquire));
        /* A worker that read the counter during the previous run and wakes into this one may have
         * sized its chunk by that run's n_units: clip to this run's (which the acquire made visible),
         * so units_done counts exactly this run's units. */
        if (first + size > p->n_units) size = p->n_units - first;
        if (size <= 0) return; /* it claimed past this run's end: nothing of it is left */
        const int64_t begin = first * p->grain, end = (first + size) * p->grain;
        p->fn(p->ctx, begin, end < p->n_items ? end : p->n_items);
        atomic_fetch_add_explicit(&p->units_done, size, memory_order_release);
        first = atomic_load_explicit(&p->next_unit, memory_order_acquire);
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
    atomic_init(&p->units_done, 0);
    atomic_init(&p->next_unit, 0);
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
    p->n_units = (n_items + p->grain - 1) / p->grain;
    atomic_store_explicit(&p->units_done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->next_unit, 0, memory_order_release);
    pthread_mutex_lock(&p->sleep_lock); /* no lost wake-up for a worker about to sleep */
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->sleep_lock);
    run_chunks(p);
    /* chunks other threads still run; yield now and then in case one was preempted */
    for (int spins = 1; atomic_load_explicit(&p->units_done, memory_order_acquire) != p->n_units; spins++) {
        if (spins % 1024 == 0)
            sched_yield();
        else
            cpu_relax();
    }
    pthread_mutex_unlock(&p->run_lock);
}
