/* Persistent worker pool (see pool.h). POSIX threads and C11 atomics.
 *
 * A run cuts [0, n_items) into units of `grain` items and gives thread i (the
 * caller is 0) one contiguous share of them, held in its own cache line as a
 * span [front, back) of units not yet taken. A thread takes from the front of
 * its own span; once it is empty, it takes from the back of another's: on a
 * machine where another process keeps a worker from starting, the others take
 * over its share instead of waiting for it, and a worker that wakes late finds
 * nothing left and is not waited for.
 *
 * Plain runs take a whole span at once, so each thread streams its share as
 * one piece. Balanced runs (rwkvx_pool_run_balanced) take the front a quarter
 * of what is left at a time and steal half of the rest: a thread that finishes
 * first helps with the end of the other's share instead of waiting, while each
 * share is still read front to back (pieces that follow each other, so the
 * stream and its prefetches run on across them). What a thief steals becomes
 * its own span, which others may steal from in turn.
 *
 * Each span also carries its run's tag (the low bits of `generation`), and a
 * thread takes only from spans of the run it is working on: one still
 * finishing a run can take nothing from the next before it has seen that run
 * published whole (all its spans stored, every counter reset).
 *
 * Memory order: the caller writes the run's fields, resets the counters and
 * stores every span, then bumps `generation` (release); a worker reads it
 * (acquire) before working on that run. A take is a compare-exchange (acquire)
 * on a span, so what a thief makes its own span (release) carries the run's
 * fields on to whoever takes from it. A thread adds the units it has done to
 * its own counter (release); the caller waits until the counters sum to the
 * run's units (acquire), after which every output written is visible to it.
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Iterations a worker spins for the next run before sleeping: long enough to
 * cover the gap between the matrix products of one token (elementwise work). */
#define SPIN_LIMIT 20000
/* A balanced run's owner takes 1/OWNER_PIECE_DIVISOR of its span's remaining units at a time: the
 * part a thief can no longer take shrinks as the share ends, for a few dozen takes per share. */
#define OWNER_PIECE_DIVISOR 4

/* One thread's share of a run: its own cache line, written by the threads that take from it. */
typedef struct share {
    alignas(64) atomic_uint_fast64_t span; /* units [front, back) of the run tagged tag: see span_of() */
    atomic_int_fast64_t units_done;        /* this run's units processed by this thread */
} share;

typedef struct worker {
    rwkvx_pool *pool;
    int32_t index; /* its share: 1 .. n_threads - 1 */
    pthread_t thread;
} worker;

struct rwkvx_pool {
    int32_t n_threads;
    int32_t n_started;
    worker *workers;
    share *shares; /* [n_threads] */
    pthread_mutex_t run_lock; /* held by the caller of a run in progress */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    atomic_uint_fast64_t generation;
    atomic_int stop;
    /* the current run, read after a successful take (see above) */
    rwkvx_task_fn fn;
    void *ctx;
    int64_t n_items, grain;
    atomic_int balanced; /* also read before a take, as a hint: see work() */
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* A span in 64 bits: front and back in SPAN_UNIT_BITS each, the run's tag in the rest (a thread
 * delayed through 2^24 runs could mistake one run for another: ~30 minutes of runs at 10 k/s). */
#define SPAN_UNIT_BITS 20
#define SPAN_MAX_UNITS ((1u << SPAN_UNIT_BITS) - 1u)
#define SPAN_TAG_BITS (64 - 2 * SPAN_UNIT_BITS)
static inline uint64_t span_of(uint32_t front, uint32_t back, uint32_t tag) {
    return (uint64_t)tag << (2 * SPAN_UNIT_BITS) | (uint64_t)back << SPAN_UNIT_BITS | front;
}
static inline uint32_t span_front(uint64_t span) { return (uint32_t)(span & SPAN_MAX_UNITS); }
static inline uint32_t span_back(uint64_t span) { return (uint32_t)(span >> SPAN_UNIT_BITS & SPAN_MAX_UNITS); }
static inline uint32_t span_tag(uint64_t span) { return (uint32_t)(span >> (2 * SPAN_UNIT_BITS)); }
static inline uint32_t tag_of(uint64_t generation) {
    return (uint32_t)(generation & ((UINT64_C(1) << SPAN_TAG_BITS) - 1u));
}
/* Units [front, back) of a span still to take, if it belongs to the run tagged `tag`. */
static inline uint32_t span_left(uint64_t span, uint32_t tag) {
    const uint32_t front = span_front(span), back = span_back(span);
    return span_tag(span) == tag && back > front ? back - front : 0;
}

/* Take units of the run tagged `tag` from the front of a span (as its owner) or from its back (as a
 * thief): [*begin, *end), or 0 if it has none left (*empty: the span seen then, when not NULL). */
static int take(share *s, uint32_t tag, int from_back, int balanced, uint32_t *begin, uint32_t *end,
                uint64_t *empty) {
    uint64_t span = atomic_load_explicit(&s->span, memory_order_acquire);
    for (;;) {
        const uint32_t left = span_left(span, tag), front = span_front(span), back = span_back(span);
        if (left == 0) {
            if (empty != NULL) *empty = span;
            return 0;
        }
        uint32_t n = left;
        if (balanced) n = from_back ? (left + 1) / 2 : (left + OWNER_PIECE_DIVISOR - 1) / OWNER_PIECE_DIVISOR;
        const uint64_t rest = from_back ? span_of(front, back - n, tag) : span_of(front + n, back, tag);
        if (atomic_compare_exchange_weak_explicit(&s->span, &span, rest, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            *begin = from_back ? back - n : front;
            *end = from_back ? back : front + n;
            return 1;
        }
    }
}

/* Take from the back of the share with the most units left; 0 if every share is empty. */
static int steal(rwkvx_pool *p, int32_t self, uint32_t tag, int balanced, uint32_t *begin, uint32_t *end) {
    for (;;) {
        int32_t victim = -1;
        uint32_t most = 0;
        for (int32_t i = 0; i < p->n_threads; i++) {
            const uint32_t left = span_left(atomic_load_explicit(&p->shares[i].span, memory_order_relaxed), tag);
            if (i != self && left > most) {
                most = left;
                victim = i;
            }
        }
        if (victim < 0) return 0;
        if (take(&p->shares[victim], tag, 1, balanced, begin, end, NULL)) return 1;
        /* emptied meanwhile: look again */
    }
}

/* Process units of the run tagged `tag` until none is left to take. */
static void work(rwkvx_pool *p, int32_t self, uint32_t tag) {
    share *own = &p->shares[self];
    for (;;) {
        uint32_t begin, end;
        uint64_t empty;
        /* the run's kind is read before a take, while the run may be over and the next one being set up:
         * a stale value only sizes one piece */
        const int balanced = atomic_load_explicit(&p->balanced, memory_order_relaxed);
        if (!take(own, tag, 0, balanced, &begin, &end, &empty)) {
            if (!steal(p, self, tag, balanced, &begin, &end)) return;
            /* the stolen units become this thread's span, taken from its front and stealable from its back
             * (its span is still the empty one seen: only this thread stores units of this run into it) */
            if (balanced && end - begin > 1) {
                atomic_store_explicit(&own->span, span_of(begin, end, tag), memory_order_release);
                continue;
            }
        }
        const int64_t grain = p->grain, n = p->n_items;
        const int64_t b = (int64_t)begin * grain, e = (int64_t)end * grain < n ? (int64_t)end * grain : n;
        p->fn(p->ctx, b, e);
        atomic_fetch_add_explicit(&own->units_done, (int_fast64_t)(end - begin), memory_order_release);
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
        work(p, w->index, tag_of(gen));
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
    p->shares = aligned_alloc(alignof(share), (size_t)n_threads * sizeof(share));
    if (p->workers == NULL || p->shares == NULL) {
        free(p->workers);
        free(p->shares);
        free(p);
        return NULL;
    }
    for (int32_t i = 0; i < n_threads; i++) {
        atomic_init(&p->shares[i].span, 0);
        atomic_init(&p->shares[i].units_done, 0);
    }
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->sleep_lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->balanced, 0);
    for (int32_t i = 1; i < n_threads; i++) {
        worker *w = &p->workers[p->n_started];
        w->pool = p;
        w->index = i;
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
    free(p->shares);
    free(p);
}

int32_t rwkvx_pool_size(const rwkvx_pool *p) { return p == NULL ? 1 : p->n_threads; }

static void run(rwkvx_pool *p, rwkvx_task_fn fn, void *ctx, int64_t n_items, int64_t grain, int balanced) {
    if (n_items <= 0) return;
    if (p == NULL || p->n_threads == 1 || pthread_mutex_trylock(&p->run_lock) != 0) {
        fn(ctx, 0, n_items); /* no pool, or busy with another caller's run: do it all here */
        return;
    }
    grain = grain > 0 ? grain : 1;
    while ((n_items + grain - 1) / grain > (int64_t)SPAN_MAX_UNITS) grain *= 2; /* units fit a span's bits */
    const int64_t units = (n_items + grain - 1) / grain;
    const uint64_t generation = atomic_load_explicit(&p->generation, memory_order_relaxed) + 1;
    const uint32_t tag = tag_of(generation);
    p->fn = fn;
    p->ctx = ctx;
    p->n_items = n_items;
    p->grain = grain;
    atomic_store_explicit(&p->balanced, balanced, memory_order_relaxed);
    for (int32_t i = 0; i < p->n_threads; i++) {
        atomic_store_explicit(&p->shares[i].units_done, 0, memory_order_relaxed);
        const uint32_t front = (uint32_t)(units * i / p->n_threads), back = (uint32_t)(units * (i + 1) / p->n_threads);
        atomic_store_explicit(&p->shares[i].span, span_of(front, back, tag), memory_order_relaxed);
    }
    pthread_mutex_lock(&p->sleep_lock); /* no lost wake-up for a worker about to sleep */
    atomic_store_explicit(&p->generation, generation, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->sleep_lock);
    work(p, 0, tag);
    /* units other threads still process; yield now and then in case one was preempted */
    for (int spins = 1;; spins++) {
        int64_t done = 0;
        for (int32_t i = 0; i < p->n_threads; i++)
            done += atomic_load_explicit(&p->shares[i].units_done, memory_order_acquire);
        if (done == units) break;
        if (spins % 1024 == 0)
            sched_yield();
        else
            cpu_relax();
    }
    pthread_mutex_unlock(&p->run_lock);
}

void rwkvx_pool_run(rwkvx_pool *p, rwkvx_task_fn fn, void *ctx, int64_t n_items, int64_t grain) {
    run(p, fn, ctx, n_items, grain, 0);
}

void rwkvx_pool_run_balanced(rwkvx_pool *p, rwkvx_task_fn fn, void *ctx, int64_t n_items, int64_t grain) {
    run(p, fn, ctx, n_items, grain, 1);
}
