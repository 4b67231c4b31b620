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
 * GB/s plain against 26-29 prefetched, 2 threads). The benchmark keeps the best
 * of both, so the bound is never a weak reader's.
 */
#include <string.h>

#include "kernels.h"

uint64_t rwkvx_read_stream(const void *data, size_t n_bytes, size_t near, size_t far) {
    const uint8_t *p = data;
    uint64_t acc[8] = {0};
    size_t i = 0;
    for (; i + 64 <= n_bytes; i += 64) {
        /* addresses past the buffer are never read: a prefetch of one is harmless */
        if (near != 0) __builtin_prefetch(p + i + near, 0, 3);
        if (far != 0) __builtin_prefetch(p + i + far, 0, 2);
        for (int j = 0; j < 8; j++) {
            uint64_t word;
            memcpy(&word, p + i + 8 * j, 8);
            acc[j] ^= word;
        }
    }
    for (; i < n_bytes; i += 8) { /* the last words; a partial one zero-padded */
        uint64_t word = 0;
        memcpy(&word, p + i, n_bytes - i < 8 ? n_bytes - i : 8);
        acc[0] ^= word;
    }
    return ((acc[0] ^ acc[1]) ^ (acc[2] ^ acc[3])) ^ ((acc[4] ^ acc[5]) ^ (acc[6] ^ acc[7]));
}
