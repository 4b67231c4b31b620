/* The "packed16" layout of a quantized weight matrix: 16 rows interleaved.
 *
 * In a file, a quantized row is its blocks back to back, each block its scales
 * then its codes. A one-token product over that layout spends most of its
 * instructions turning a block into something a SIMD unit can use: gathering
 * nibbles, spreading a scale over the lanes, reducing lanes per block. Stored
 * with 16 rows interleaved, the same bytes feed the int8 dot-product
 * instruction directly: int32 lane r of a vector belongs to row r, so one
 * vpdpbusd advances 16 rows by 4 weights, sixteen scales arrive with one
 * load, and no reduction across lanes is ever needed.
 *
 * Layout: groups of 16 rows (the last one padded with all-zero rows) back to
 * back; a group is its n_blocks = n_in / 32 block columns back to back; a
 * column holds block c of each of the 16 rows as these fields, in this order:
 *
 *   d      [16] fp16     block scale of row r at [r]
 *   m      [16] fp16     block minimum (Q4_1, Q5_1 only)
 *   qh     [4][2] u64    fifth bits (Q5_0, Q5_1 only), see below
 *   codes  [CODE_BYTES]  see below
 *
 * So a whole matrix is read as one sequential stream, which the prefetchers
 * follow across column and group boundaries alike.
 *
 * Codes are unsigned (the _0 types' signed codes plus their offset: 8, 16,
 * 128; the integer product corrects for it, see rwkvx_q8_acts.aux). Within a
 * block column, a 64-byte vector holds 4 bytes per row, row r at bytes
 * [4r, 4r + 4):
 *   Q8_0 (CODE_BYTES 512): vector s (0..7) holds weights 4s..4s+3 of each row.
 *   4/5-bit (CODE_BYTES 256): vector z (0..3) holds the file's qs bytes
 *     4z..4z+3 of each row unchanged: their low nibbles are weights 4z..4z+3,
 *     their high nibbles weights 16+4z..16+4z+3.
 *
 * The fifth bits (Q5_0, Q5_1) come in one of two arrangements, both 64 bytes
 * a column; the tensor's layout says which:
 *   RWKVX_LAYOUT_PACKED16 (row masks, for AVX-512's mask registers):
 *     qh[z][0] bit 4r+i is row r's fifth bit of weight 4z+i (the low nibbles
 *     of vector z), qh[z][1] bit 4r+i that of weight 16+4z+i.
 *   RWKVX_LAYOUT_PACKED16_PLANES (bit planes, for AVX2, which has no mask
 *     registers and no cheap way to spread 32 bits over 32 bytes): qh is two
 *     32-byte halves, rows 0-7 and 8-15, each lined up with the halves of the
 *     code vectors; byte j of half h holds the fifth bits of code byte 32h + j
 *     of all four vectors: bit 4 + z that of its low nibble in vector z, bit z
 *     that of its high nibble. One shift and one AND bring a vector's fifth
 *     bits to bit 4 of each byte, next to its nibbles.
 * For the other types the two are the same bytes.
 *
 * A group takes exactly 16 rows' worth of file bytes, so a packed matrix is as
 * large as the file's (plus the padding rows of a last partial group).
 */
#ifndef RWKVX_PACKED_H
#define RWKVX_PACKED_H

#include <stddef.h>
#include <stdint.h>

#include "blocks.h"

#define RWKVX_PACK_ROWS 16

/* How a tensor's data is laid out (rwkvx_tensor.layout). */
enum rwkvx_layout { RWKVX_LAYOUT_ROWS = 0, RWKVX_LAYOUT_PACKED16 = 1, RWKVX_LAYOUT_PACKED16_PLANES = 2 };

static inline int rwkvx_layout_is_packed(int layout) { return layout != RWKVX_LAYOUT_ROWS; }

/* Byte offsets of the fields inside one block column, the column's size, and the group's. */
typedef struct rwkvx_packed_regions {
    size_t d, m, qh, codes, column, group;
} rwkvx_packed_regions;

static inline int rwkvx_packed_has_min(int type) { return type == RWKVX_TYPE_Q4_1 || type == RWKVX_TYPE_Q5_1; }
static inline int rwkvx_packed_has_qh(int type) { return type == RWKVX_TYPE_Q5_0 || type == RWKVX_TYPE_Q5_1; }
static inline size_t rwkvx_packed_code_bytes(int type) { return type == RWKVX_TYPE_Q8_0 ? 512 : 256; }

static inline rwkvx_packed_regions rwkvx_packed_layout(int type, int64_t n_blocks) {
    const size_t scales = RWKVX_PACK_ROWS * sizeof(rwkvx_half);
    rwkvx_packed_regions r;
    r.d = 0;
    r.m = scales;
    r.qh = r.m + (rwkvx_packed_has_min(type) ? scales : 0);
    r.codes = r.qh + (rwkvx_packed_has_qh(type) ? 4 * 2 * sizeof(uint64_t) : 0);
    r.column = r.codes + rwkvx_packed_code_bytes(type);
    r.group = (size_t)n_blocks * r.column;
    return r;
}

/* Bytes of a packed matrix of n_rows rows of n_in weights (n_rows rounded up to 16). */
size_t rwkvx_packed_bytes(int type, int64_t n_in, int64_t n_rows);

/* Write groups [group_begin, group_end) of src (a quantized tensor in file
 * layout) into dst (rwkvx_packed_bytes large; the groups land at their own
 * offsets, so threads may pack disjoint ranges of one matrix at once), in
 * layout RWKVX_LAYOUT_PACKED16 or RWKVX_LAYOUT_PACKED16_PLANES. */
void rwkvx_pack_groups(const void *src, int type, int64_t n_in, int64_t n_rows, int layout, void *dst,
                       int64_t group_begin, int64_t group_end);

#endif /* RWKVX_PACKED_H */
