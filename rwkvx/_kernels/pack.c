/* Rewrites a quantized matrix from file layout into packed16 (packed.h), and
 * copies the matrices that keep their layout, both split over a pool's threads.
 *
 * Portable and bytewise: the packed codes and scales are the file's own bytes
 * moved (Q8_0 codes also made unsigned), so every kernel over the packed
 * layout sees exactly the integers and scales of the file.
 */
#define _DEFAULT_SOURCE /* madvise and sysconf under -std=c11 */
#include <stddef.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "kernels.h"
#include "packed.h"
#include "pool.h"

size_t rwkvx_packed_bytes(int type, int64_t n_in, int64_t n_rows) {
    const int64_t groups = (n_rows + RWKVX_PACK_ROWS - 1) / RWKVX_PACK_ROWS;
    return (size_t)groups * rwkvx_packed_layout(type, n_in / RWKVX_QK).group;
}

/* Byte offsets of a block's fields in the file layout, from the block structs of blocks.h. */
typedef struct block_fields {
    size_t d, m, qh, qs;
} block_fields;

static block_fields fields_of(int type) {
    switch (type) {
    case RWKVX_TYPE_Q4_1:
        return (block_fields){offsetof(rwkvx_block_q4_1, d), offsetof(rwkvx_block_q4_1, m), 0,
                              offsetof(rwkvx_block_q4_1, qs)};
    case RWKVX_TYPE_Q5_0:
        return (block_fields){offsetof(rwkvx_block_q5_0, d), 0, offsetof(rwkvx_block_q5_0, qh),
                              offsetof(rwkvx_block_q5_0, qs)};
    case RWKVX_TYPE_Q5_1:
        return (block_fields){offsetof(rwkvx_block_q5_1, d), offsetof(rwkvx_block_q5_1, m),
                              offsetof(rwkvx_block_q5_1, qh), offsetof(rwkvx_block_q5_1, qs)};
    case RWKVX_TYPE_Q8_0:
        return (block_fields){offsetof(rwkvx_block_q8_0, d), 0, 0, offsetof(rwkvx_block_q8_0, qs)};
    default: /* Q4_0 */
        return (block_fields){offsetof(rwkvx_block_q4_0, d), 0, 0, offsetof(rwkvx_block_q4_0, qs)};
    }
}

/* The bit planes of one row's block (packed.h): byte i of the result holds the fifth bits of the row's
 * code byte i of vectors z = 0..3, weight 4z + i at bit 4 + z and weight 16 + 4z + i at bit z. qh's
 * nibble z holds weights 4z..4z+3, so spreading a nibble's bit i to bit 8i places a vector's bits. */
static uint32_t fifth_bit_planes(uint32_t qh) {
    static const uint32_t spread[16] = {0x00000000, 0x00000001, 0x00000100, 0x00000101, 0x00010000, 0x00010001,
                                        0x00010100, 0x00010101, 0x01000000, 0x01000001, 0x01000100, 0x01000101,
                                        0x01010000, 0x01010001, 0x01010100, 0x01010101};
    uint32_t planes = 0;
    for (int z = 0; z < 4; z++)
        planes |= spread[(qh >> (4 * z)) & 0xfu] << (4 + z) | spread[(qh >> (16 + 4 * z)) & 0xfu] << z;
    return planes;
}

/* Column c of one group: block c of each of the group's rows (NULL: a padding row). */
static void pack_column(int type, int layout, const uint8_t *const blocks[RWKVX_PACK_ROWS],
                        const rwkvx_packed_regions *regions, int64_t c, uint8_t *group) {
    const block_fields f = fields_of(type);
    const size_t code_bytes = rwkvx_packed_code_bytes(type);
    uint8_t *column = group + (size_t)c * regions->column;
    uint8_t *codes = column + regions->codes, *d = column + regions->d, *m = column + regions->m;
    union { /* the column's 64 bytes of fifth bits, in the layout's arrangement (packed.h) */
        uint64_t masks[4][2];                 /* row masks */
        uint8_t planes[RWKVX_PACK_ROWS * 4]; /* bit planes: byte 4r + i of row r */
    } fifth = {{{0}}};
    memset(codes, 0, code_bytes);
    for (int r = 0; r < RWKVX_PACK_ROWS; r++) {
        const uint8_t *b = blocks[r];
        if (b == NULL) {
            memset(d + 2 * r, 0, 2); /* scale 0: the row's sums come out 0 */
            if (rwkvx_packed_has_min(type)) memset(m + 2 * r, 0, 2);
            continue;
        }
        memcpy(d + 2 * r, b + f.d, 2);
        if (rwkvx_packed_has_min(type)) memcpy(m + 2 * r, b + f.m, 2);
        if (type == RWKVX_TYPE_Q8_0) {
            for (int s = 0; s < 8; s++) { /* 4 codes at a time, sign bits flipped: q + 128 */
                uint32_t four;
                memcpy(&four, b + f.qs + 4 * s, 4);
                four ^= 0x80808080u;
                memcpy(codes + 64 * s + 4 * r, &four, 4);
            }
            continue;
        }
        for (int z = 0; z < 4; z++) memcpy(codes + 64 * z + 4 * r, b + f.qs + 4 * z, 4);
        if (rwkvx_packed_has_qh(type)) {
            const uint32_t h = rwkvx_load_qh(b + f.qh);
            if (layout == RWKVX_LAYOUT_PACKED16_PLANES) {
                const uint32_t row_planes = fifth_bit_planes(h); /* little-endian: byte i at planes[4r + i] */
                memcpy(fifth.planes + 4 * r, &row_planes, 4);
            } else
                for (int z = 0; z < 4; z++) { /* bits 4z..4z+3 (and 16 more) move to 4r..4r+3 as a nibble */
                    fifth.masks[z][0] |= (uint64_t)((h >> (4 * z)) & 0xfu) << (4 * r);
                    fifth.masks[z][1] |= (uint64_t)((h >> (16 + 4 * z)) & 0xfu) << (4 * r);
                }
        }
    }
    if (rwkvx_packed_has_qh(type)) memcpy(column + regions->qh, &fifth, sizeof fifth);
}

void rwkvx_pack_groups(const void *src, int type, int64_t n_in, int64_t n_rows, int layout, void *dst,
                       int64_t group_begin, int64_t group_end) {
    const int64_t n_blocks = n_in / RWKVX_QK;
    const rwkvx_packed_regions regions = rwkvx_packed_layout(type, n_blocks);
    const size_t row_bytes = rwkvx_row_bytes(type, (size_t)n_in), block_bytes = rwkvx_row_bytes(type, RWKVX_QK);
    for (int64_t g = group_begin; g < group_end; g++) {
        uint8_t *group = (uint8_t *)dst + (size_t)g * regions.group;
        for (int64_t c = 0; c < n_blocks; c++) {
            const uint8_t *blocks[RWKVX_PACK_ROWS];
            for (int r = 0; r < RWKVX_PACK_ROWS; r++) {
                const int64_t row = g * RWKVX_PACK_ROWS + r;
                blocks[r] = row < n_rows ? (const uint8_t *)src + (size_t)row * row_bytes + (size_t)c * block_bytes
                                         : NULL;
            }
            pack_column(type, layout, blocks, &regions, c, group);
        }
    }
}

rwkvx_tensor rwkvx_tensor_rows(const rwkvx_tensor *w, int64_t begin, int64_t end) {
    rwkvx_tensor part = *w;
    part.n_rows = (int32_t)(end - begin);
    if (rwkvx_layout_is_packed(w->layout))
        part.data = (const uint8_t *)w->data +
                    (size_t)(begin / RWKVX_PACK_ROWS) * rwkvx_packed_layout(w->type, w->n_in / RWKVX_QK).group;
    else
        part.data = (const uint8_t *)w->data + (size_t)begin * rwkvx_row_bytes(w->type, (size_t)w->n_in);
    return part;
}

typedef struct pack_job {
    const void *src;
    int type;
    int64_t n_in, n_rows;
    int layout;
    void *dst;
} pack_job;

/* Map the pages of [p, p + n) in one call, as the kernel can do in bulk, instead
 * of one fault per page as the packer reaches them: read for the file's pages
 * (in the page cache already, or read ahead from disk), write for the new
 * buffer. Advice only: on an older kernel it fails and faults happen as usual. */
static void populate(const void *p, size_t n, int writable) {
#if defined(__linux__)
    enum { POPULATE_READ = 22, POPULATE_WRITE = 23 }; /* MADV_POPULATE_*, Linux 5.14; older headers lack them */
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t begin = (uintptr_t)p / page * page, end = (uintptr_t)p + n;
    (void)madvise((void *)begin, end - begin, writable ? POPULATE_WRITE : POPULATE_READ);
#else
    (void)p, (void)n, (void)writable;
#endif
}

static void pack_task(void *ctx, int64_t group_begin, int64_t group_end) {
    const pack_job *job = ctx;
    const size_t row_bytes = rwkvx_row_bytes(job->type, (size_t)job->n_in);
    const size_t group_bytes = rwkvx_packed_layout(job->type, job->n_in / RWKVX_QK).group;
    const int64_t row_end = group_end * RWKVX_PACK_ROWS < job->n_rows ? group_end * RWKVX_PACK_ROWS : job->n_rows;
    populate((const uint8_t *)job->src + (size_t)group_begin * RWKVX_PACK_ROWS * row_bytes,
             (size_t)(row_end - group_begin * RWKVX_PACK_ROWS) * row_bytes, 0);
    populate((uint8_t *)job->dst + (size_t)group_begin * group_bytes, (size_t)(group_end - group_begin) * group_bytes, 1);
    rwkvx_pack_groups(job->src, job->type, job->n_in, job->n_rows, job->layout, job->dst, group_begin, group_end);
}

void rwkvx_pack_matrix(struct rwkvx_pool *pool, const void *src, int type, int64_t n_in, int64_t n_rows, int layout,
                       void *dst) {
    pack_job job = {src, type, n_in, n_rows, layout, dst};
    rwkvx_pool_run(pool, pack_task, &job, (n_rows + RWKVX_PACK_ROWS - 1) / RWKVX_PACK_ROWS, 1);
}

typedef struct copy_job {
    const uint8_t *src;
    uint8_t *dst;
    size_t n;
} copy_job;

/* Bytes per item of a copy: the pool splits whole items, and a share's pages are populated at once. */
#define COPY_ITEM_BYTES ((size_t)1 << 16)

static void copy_task(void *ctx, int64_t item_begin, int64_t item_end) {
    const copy_job *job = ctx;
    const size_t begin = (size_t)item_begin * COPY_ITEM_BYTES;
    const size_t end = (size_t)item_end * COPY_ITEM_BYTES < job->n ? (size_t)item_end * COPY_ITEM_BYTES : job->n;
    populate(job->src + begin, end - begin, 0);
    populate(job->dst + begin, end - begin, 1);
    memcpy(job->dst + begin, job->src + begin, end - begin);
}

void rwkvx_copy_bytes(struct rwkvx_pool *pool, const void *src, size_t n_bytes, void *dst) {
    copy_job job = {src, dst, n_bytes};
    rwkvx_pool_run(pool, copy_task, &job, (int64_t)((n_bytes + COPY_ITEM_BYTES - 1) / COPY_ITEM_BYTES), 1);
}
