/* One matrix product kernel against a plain read of the same bytes, pass by pass.
 *
 * usage: kernel_vs_read LEVEL TYPE N_IN N_ROWS PASSES COPIES
 *   LEVEL avx2 | avx512; TYPE a ggml type id (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 7 Q5_0, 8 Q5_1, 9 Q8_0;
 *   quantized matrices are packed as rwkvx.load packs them); COPIES: pass k uses copy k mod COPIES of
 *   the matrix and each of its reads a copy of the read buffer of its own (READS * COPIES of those), so that with enough copies every pass reads memory the caches
 *   no longer hold, as decoding reads each matrix once per token (1: the same bytes every pass, in
 *   the caches when they fit)
 *
 * Two threads, each its half of the rows, one token: what decoding does with every matrix. Each pass
 * times the product, then reads of a buffer as large as the matrix (rwkvx_read_stream): a plain one, a
 * prefetching one, and one of 4 parts side by side (within windows of 4 MB), so that all share the
 * machine's moment; a pass's ratio is the product's time over the fastest read's. Prints one line: TYPE
 * N_IN N_ROWS BYTES, the median, first and third quartile of the ratios, and the median GB/s of the
 * product (the first pass dropped). Built and run by kernel_vs_read.py.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "kernels.h"
#include "packed.h"

#define MAX_PASSES 1000
#define READS 3 /* a plain read, one with the products' prefetch distances, one of 4 parts side by side */
#define READ_WINDOW (4u << 20) /* the 4 parts within windows of this many bytes (memprobe.c) */
#define TIMED_WAYS (1 + READS) /* the product, then the reads */

typedef void (*float_product)(const rwkvx_tensor *, const float *, int64_t, int64_t, float *, int64_t);
typedef void (*packed_product)(const rwkvx_tensor *, const rwkvx_q8_acts *, float *, int64_t);

static struct {
    float_product float_fn;
    packed_product packed_fn;
    rwkvx_tensor w;
    const float *x;
    rwkvx_q8_acts xq;
    float *y;
    const uint8_t *weights;     /* copy k at weights + k * copy_stride */
    /* READS * copies copies: the reads of a pass never read the same bytes, or a later one would find an
     * earlier one's in the last-level cache whenever they fit there */
    const uint8_t *read_buffer;
    size_t bytes, copy_stride;
    int passes, copies;
    atomic_int arrived, phase;
    double seconds[TIMED_WAYS][MAX_PASSES];
    volatile uint64_t sink;
} run;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Both threads past this point before either goes on: spinning, as the pool's threads do between the
 * products of a token (a futex wake-up would add tens of microseconds to every pass of a small matrix). */
static void barrier(int *my_phase) {
    *my_phase = !*my_phase;
    if (atomic_fetch_add(&run.arrived, 1) == 1) {
        atomic_store(&run.arrived, 0);
        atomic_store(&run.phase, *my_phase);
    } else
        while (atomic_load(&run.phase) != *my_phase) __builtin_ia32_pause();
}

static void *thread_main(void *arg) {
    const int id = (int)(intptr_t)arg;
    int64_t half = run.w.n_rows / 2;
    half -= half % RWKVX_PACK_ROWS; /* a packed share starts on a group */
    const int64_t begin = id == 0 ? 0 : half, end = id == 0 ? half : run.w.n_rows;
    const size_t read_bytes = run.bytes / 2;
    int my_phase = 0;
    for (int pass = 0; pass < run.passes; pass++)
        for (int way = 0; way < TIMED_WAYS; way++) {
            rwkvx_tensor w = run.w;
            w.data = run.weights + (size_t)(pass % run.copies) * run.copy_stride;
            const rwkvx_tensor share = rwkvx_tensor_rows(&w, begin, end);
            const size_t read_copy = (size_t)((READS * pass + way - 1) % (READS * run.copies));
            const uint8_t *read_part = run.read_buffer + read_copy * run.copy_stride + (size_t)id * read_bytes;
            barrier(&my_phase);
            const double start = now();
            if (way == 0 && run.packed_fn != NULL)
                run.packed_fn(&share, &run.xq, run.y + begin, run.w.n_rows);
            else if (way == 0)
                run.float_fn(&share, run.x, run.w.n_in, 1, run.y + begin, run.w.n_rows);
            else
                run.sink += rwkvx_read_stream(read_part, read_bytes, way == 2 ? 2048 : 0, way == 2 ? 4096 : 0,
                                              way == 3 ? 4 : 1, way == 3 ? READ_WINDOW : 0);
            barrier(&my_phase);
            if (id == 0) run.seconds[way][pass] = now() - start;
        }
    return NULL;
}

/* Zeroed memory in 2 MiB pages where the kernel gives them, as rwkvx.load places its matrices. */
static void *huge_zeroed(size_t bytes) {
    const size_t huge = (size_t)1 << 21, rounded = (bytes + huge - 1) / huge * huge;
    void *p = aligned_alloc(huge, rounded);
    if (p == NULL) {
        fprintf(stderr, "kernel_vs_read: cannot allocate %zu bytes\n", rounded);
        exit(1);
    }
    madvise(p, rounded, MADV_HUGEPAGE);
    memset(p, 0, rounded);
    return p;
}

/* Weights in the file's layout: plausible finite values (the speed of a product never depends on them,
 * but NaN scales could end up as denormals in the sums). */
static uint8_t *random_weights(int type, int64_t n_in, int64_t n_rows, size_t *bytes) {
    *bytes = rwkvx_row_bytes(type, (size_t)n_in) * (size_t)n_rows;
    uint8_t *w = huge_zeroed(*bytes);
    srand(1);
    if (type == RWKVX_TYPE_F32)
        for (size_t i = 0; i < *bytes / 4; i++) ((float *)w)[i] = (float)(rand() % 200 - 100) * 0.01f;
    else if (type == RWKVX_TYPE_F16)
        for (size_t i = 0; i < *bytes / 2; i++) ((uint16_t *)w)[i] = (uint16_t)(0x3c00 ^ (rand() & 0x83ff));
    else {
        for (size_t i = 0; i < *bytes; i++) w[i] = (uint8_t)rand();
        const size_t block = rwkvx_row_bytes(type, RWKVX_QK);
        const int has_min = type == RWKVX_TYPE_Q4_1 || type == RWKVX_TYPE_Q5_1;
        for (size_t i = 0; i < *bytes; i += block) {
            const uint16_t scale = 0x2000; /* 2^-7, then the min for _1 types */
            memcpy(w + i, &scale, 2);
            if (has_min) memcpy(w + i + 2, &scale, 2);
        }
    }
    return w;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: kernel_vs_read avx2|avx512 TYPE N_IN N_ROWS PASSES COPIES\n");
        return 2;
    }
    /* the level's own table: its products and the packed layout a model packs into there */
    const int simd = strcmp(argv[1], "avx2") == 0 || strcmp(argv[1], "avx512") == 0;
    const rwkvx_kernel_table *level = simd ? rwkvx_kernel_table_for(argv[1]) : NULL;
    const int type = atoi(argv[2]);
    const int64_t n_in = atoll(argv[3]), n_rows = atoll(argv[4]);
    run.passes = atoi(argv[5]);
    run.copies = atoi(argv[6]);
    const int quantized = type != RWKVX_TYPE_F32 && type != RWKVX_TYPE_F16;
    if (level == NULL || run.copies < 1 || run.passes < 2 || run.passes > MAX_PASSES || n_in <= 0 ||
        n_rows < 2 * RWKVX_PACK_ROWS || (quantized && (n_in % RWKVX_QK != 0 || n_rows % RWKVX_PACK_ROWS != 0)) ||
        rwkvx_row_bytes(type, RWKVX_QK) == 0) {
        fprintf(stderr, "kernel_vs_read: bad arguments (or a level this CPU does not run)\n");
        return 2;
    }
    size_t file_bytes;
    uint8_t *weights = random_weights(type, n_in, n_rows, &file_bytes);
    run.w = (rwkvx_tensor){weights, type, (int32_t)n_in, (int32_t)n_rows, RWKVX_LAYOUT_ROWS};
    run.bytes = file_bytes;
    float *x = huge_zeroed((size_t)n_in * sizeof(float));
    for (int64_t i = 0; i < n_in; i++) x[i] = (float)(i % 7) * 0.1f - 0.3f;
    run.x = x;
    if (quantized) {
        run.bytes = rwkvx_packed_bytes(type, n_in, n_rows);
        run.w.layout = level->packed_layout;
        if (rwkvx_q8_acts_quantize(&run.xq, type, x, n_in, 1, n_in, rwkvx_q8_acts_want_lanes(&run.w)) != RWKVX_OK)
            return 1;
        run.packed_fn = level->matmul_q8_packed;
    } else
        run.float_fn = level->matmul;
    run.copy_stride = (run.bytes + 4095) / 4096 * 4096;
    uint8_t *copies = huge_zeroed(run.copy_stride * (size_t)run.copies);
    for (int k = 0; k < run.copies; k++) {
        uint8_t *copy = copies + (size_t)k * run.copy_stride;
        if (quantized)
            rwkvx_pack_matrix(NULL, weights, type, n_in, n_rows, run.w.layout, copy);
        else
            memcpy(copy, weights, run.bytes);
    }
    run.weights = copies;
    run.y = huge_zeroed((size_t)n_rows * sizeof(float));
    uint8_t *read_buffer = huge_zeroed(READS * run.copy_stride * (size_t)run.copies);
    memset(read_buffer, 1, READS * run.copy_stride * (size_t)run.copies);
    run.read_buffer = read_buffer;

    pthread_t other;
    pthread_create(&other, NULL, thread_main, (void *)(intptr_t)1);
    thread_main((void *)(intptr_t)0);
    pthread_join(other, NULL);

    double ratio[MAX_PASSES], gbs[MAX_PASSES];
    int n = 0;
    for (int pass = 1; pass < run.passes; pass++, n++) { /* the first pass only warms up */
        double read = run.seconds[1][pass];
        for (int way = 2; way < TIMED_WAYS; way++)
            if (run.seconds[way][pass] < read) read = run.seconds[way][pass];
        ratio[n] = run.seconds[0][pass] / read;
        gbs[n] = (double)run.bytes / run.seconds[0][pass] / 1e9;
    }
    qsort(ratio, (size_t)n, sizeof(double), cmp_double);
    qsort(gbs, (size_t)n, sizeof(double), cmp_double);
    printf("%d %lld %lld %zu %.3f %.3f %.3f %.1f\n", type, (long long)n_in, (long long)n_rows, run.bytes, ratio[n / 2],
           ratio[n / 4], ratio[(3 * n) / 4], gbs[n / 2]);
    return 0;
}
