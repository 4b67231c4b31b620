/* The sums behind phase_times.h. */
#define _POSIX_C_SOURCE 200809L
#include "phase_times.h"

#include <string.h>
#include <time.h>

#define RWKVX_PHASE_NAME(id, name) name,
const char *const rwkvx_phase_names[RWKVX_N_PHASES] = {RWKVX_PHASES(RWKVX_PHASE_NAME)};
#undef RWKVX_PHASE_NAME

#ifdef RWKVX_PHASE_TIMES
static double sums[RWKVX_N_PHASES];
static int64_t counts[RWKVX_N_PHASES];
static double mark; /* when the last step ended */

static double clock_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void rwkvx_phase_start(void) { mark = clock_seconds(); }

void rwkvx_phase_end(int phase) {
    const double now = clock_seconds();
    sums[phase] += now - mark;
    counts[phase]++;
    mark = now;
}

int rwkvx_phase_times_read(double *seconds, int64_t *calls) {
    memcpy(seconds, sums, sizeof sums);
    memcpy(calls, counts, sizeof counts);
    return 1;
}

void rwkvx_phase_times_reset(void) {
    memset(sums, 0, sizeof sums);
    memset(counts, 0, sizeof counts);
}
#else
int rwkvx_phase_times_read(double *seconds, int64_t *calls) {
    (void)seconds;
    (void)calls;
    return 0;
}

void rwkvx_phase_times_reset(void) {}
#endif
