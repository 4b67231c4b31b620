/* Streaming-read probe for the benchmark's memory bandwidth figure.
 *
 * Plain C at baseline flags: eight independent xor chains over 64-byte steps
 * keep enough loads in flight that one core is limited by memory, not by the
 * loop (the Cython loop it replaces reached only two thirds of this).
 *
 * Optionally each line is also asked for ahead of use at two distances, as the
 * products do (into L1 `near` bytes ahead, into L2 `far` bytes ahead): when the
 * machine's memory latency is high, one core's demand loads and the hardware
 * prefetchers alone keep too few lines in flight, and a plain read then reads
 * less than the products stream (seen on this project's build machine: 21-23
 * GB/s plain against 26-29 prefetched, 2 threads). And the buffer may be read as
 * `streams` contiguous parts side by side, a line of each in turn, as the AVX2
 * float products read 4 rows from 4 quarters of a matrix: on an AMD EPYC (Zen 3)
 * one core pulls more from memory that way than from one stream. The parts may be
 * taken window by window, as the products read them (a thread's share of one
 * matrix after another): on the same machine 4 parts side by side within windows
 * of 0.5-64 MB read 22-24 GB/s (mean of 8 passes, 2 threads) where 4 parts of a
 * thread's whole 512 MB read 21, and the AVX2 F16 products of v7 1.5B read their
 * 2.5 GB per token in 0.83 of the time the probe without windows took. The
 * benchmark keeps the best of all its ways, so the bound is never a weak reader's.
 */
#include <string.h>

#include "kernels.h"

/* Lines [0, part) of `streams` parts side by side, part bytes apart, into acc; streams is a constant
 * in every caller, so the loop is as tight as a single stream's. */
static inline __attribute__((always_inline)) void read_parts(const uint8_t *p, size_t part, int streams,
                                                             size_t near, size_t far, uint64_t acc[8]) {
    for (size_t i = 0; i < part; i += 64)
        for (int s = 0; s < streams; s++) {
            const uint8_t *line = p + (size_t)s * part + i;
            /* addresses past the buffer are never read: a prefetch of one is harmless */
            if (near != 0) __builtin_prefetch(line + near, 0, 3);
            if (far != 0) __builtin_prefetch(line + far, 0, 2);
            for (int j = 0; j < 8; j++) {
                uint64_t word;
                memcpy(&word, line + 8 * j, 8);
                acc[j] ^= word;
            }
        }
}

/* n_bytes at p as `streams` parts side by side, the bytes left after them word by word (a partial word
 * zero-padded), into acc. */
static void read_window(const uint8_t *p, size_t n_bytes, size_t near, size_t far, int streams, uint64_t acc[8]) {
    const size_t part = n_bytes / (size_t)streams / 64 * 64; /* each stream's bytes; the rest after them */
    switch (streams) {
    case 8: read_parts(p, part, 8, near, far, acc); break;
    case 4: read_parts(p, part, 4, near, far, acc); break;
    case 2: read_parts(p, part, 2, near, far, acc); break;
    default: read_parts(p, part, 1, near, far, acc); break;
    }
    for (size_t i = (size_t)streams * part; i < n_bytes; i += 8) {
        uint64_t word = 0;
        memcpy(&word, p + i, n_bytes - i < 8 ? n_bytes - i : 8);
        acc[0] ^= word;
    }
}

uint64_t rwkvx_read_stream(const void *data, size_t n_bytes, size_t near, size_t far, int streams, size_t window) {
    const uint8_t *p = data;
    streams = streams >= 8 ? 8 : streams >= 4 ? 4 : streams >= 2 ? 2 : 1;
    /* windows of whole lines, so that every window but the last ends on a word */
    window = window / 64 * 64;
    if (window == 0 || window > n_bytes) window = n_bytes;
    uint64_t acc[8] = {0};
    for (size_t start = 0; start < n_bytes; start += window)
        read_window(p + start, n_bytes - start < window ? n_bytes - start : window, near, far, streams, acc);
    return ((acc[0] ^ acc[1]) ^ (acc[2] ^ acc[3])) ^ ((acc[4] ^ acc[5]) ^ (acc[6] ^ acc[7]));
}
