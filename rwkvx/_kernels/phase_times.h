/* Wall time of each step of a layer, summed over calls: where a token's time goes (bench/phases.py).
 *
 * Compiled in only when the build defines RWKVX_PHASE_TIMES (setup.py does with the environment
 * variable of the same name: bench/phases.py builds such a copy of its own). Otherwise every macro below
 * is empty and rwkvx_phase_times_read() says so. The calling thread of a forward pass records the steps
 * it runs (pool runs included, as it waits for them), one model at a time: the sums are not shared
 * between threads safely.
 */
#ifndef RWKVX_PHASE_TIMES_H
#define RWKVX_PHASE_TIMES_H

#include <stdint.h>

#define RWKVX_PHASES(X)                                                         \
    X(EMBED, "embedding")                                                       \
    X(MIX, "layer norm, token shift, mixes (v7)")                               \
    X(INPUT_PRODUCTS, "first products: r, k, v and the low-rank inputs (v7)")   \
    X(LOW_RANK_PRODUCTS, "low-rank second products (v7)")                       \
    X(HEADS, "heads: gates, recurrence, group norm (v7)")                       \
    X(OUTPUT_PRODUCT, "output product (v7)")                                    \
    X(TIME_MIX, "time mixing (v4, v5, v6: all of it)")                          \
    X(FFN_INPUT, "FFN layer norm, token shift, mix")                            \
    X(FFN_KEY, "FFN key product, relu squared")                                 \
    X(FFN_VALUE, "FFN value product (v4-v6: and receptance)")                   \
    X(HEAD, "output layer norm and head")

#define RWKVX_PHASE_ENUM(id, name) RWKVX_PHASE_##id,
enum rwkvx_phase { RWKVX_PHASES(RWKVX_PHASE_ENUM) RWKVX_N_PHASES };
#undef RWKVX_PHASE_ENUM

extern const char *const rwkvx_phase_names[RWKVX_N_PHASES];

/* Copy out the sums (seconds[i], calls[i] for phase i) and return 1, or return 0 when this build does
 * not time its steps. */
int rwkvx_phase_times_read(double *seconds, int64_t *calls);
void rwkvx_phase_times_reset(void);

#ifdef RWKVX_PHASE_TIMES
void rwkvx_phase_start(void);
void rwkvx_phase_end(int phase);
/* A step runs from the end of the one before it, or from the last PHASE_START. */
#define PHASE_START() rwkvx_phase_start()
#define PHASE_END(id) rwkvx_phase_end(RWKVX_PHASE_##id)
#else
#define PHASE_START() ((void)0)
#define PHASE_END(id) ((void)0)
#endif

#endif /* RWKVX_PHASE_TIMES_H */
