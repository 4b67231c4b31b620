/* Portable product over the packed16 layouts (packed.h, either arrangement of
 * the fifth bits): the oracle for the SIMD kernels over them, and the fallback
 * of levels that have none.
 *
 * It decodes each packed row back into the signed codes, scales and minima of
 * the file and hands them to the reference's own arithmetic
 * (rwkvx_q8_row_products), so a packed matrix gives the same floats as its
 * file layout.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "packed.h"

/* Row r's fifth bits of code byte i of vector z: bit 0 for its low nibble, bit 1 for its high one. */
static unsigned fifth_bits(int layout, const uint8_t *qh, int z, int r, int i) {
    if (layout == RWKVX_LAYOUT_PACKED16_PLANES) {
        const uint8_t plane = qh[4 * r + i];
        return ((plane >> (4 + z)) & 1u) | (((plane >> z) & 1u) << 1);
    }
    uint64_t masks[2];
    memcpy(masks, qh + 16 * z, sizeof masks);
    return (unsigned)((masks[0] >> (4 * r + i)) & 1u) | (unsigned)(((masks[1] >> (4 * r + i)) & 1u) << 1);
}

/* Row r's signed codes q[32], scale d and minimum m of block column c of a group. */
static void unpack_block(int type, int layout, const uint8_t *group, const rwkvx_packed_regions *regions, int64_t c,
                         int r, int8_t q[RWKVX_QK], float *d, float *m) {
    const uint8_t *column = group + (size_t)c * regions->column, *codes = column + regions->codes;
    *d = rwkvx_half_to_float(rwkvx_load_half(column + regions->d + 2 * (size_t)r));
    *m = rwkvx_packed_has_min(type) ? rwkvx_half_to_float(rwkvx_load_half(column + regions->m + 2 * (size_t)r)) : 0.0f;
    const int offset = rwkvx_type_code_offset(type);
    if (type == RWKVX_TYPE_Q8_0) {
        for (int j = 0; j < RWKVX_QK; j++) q[j] = (int8_t)(codes[64 * (j / 4) + 4 * r + j % 4] - offset);
        return;
    }
    for (int z = 0; z < 4; z++)
        for (int i = 0; i < 4; i++) {
            const uint8_t byte = codes[64 * z + 4 * r + i];
            const unsigned fifth = rwkvx_packed_has_qh(type) ? fifth_bits(layout, column + regions->qh, z, r, i) : 0;
            const int lo = (byte & 0x0f) | (int)((fifth & 1u) << 4);
            const int hi = (byte >> 4) | (int)((fifth >> 1) << 4);
            q[4 * z + i] = (int8_t)(lo - offset);
            q[16 + 4 * z + i] = (int8_t)(hi - offset);
        }
}

void rwkvx_matmul_q8_packed_ref(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    const int64_t nb = w->n_in / RWKVX_QK;
    const rwkvx_packed_regions regions = rwkvx_packed_layout(w->type, nb);
    int8_t *q = malloc((size_t)nb * RWKVX_QK + 2 * (size_t)nb * sizeof(float));
    if (q == NULL) abort(); /* one decoded row: only on exhausted memory */
    float *dw = (float *)(q + nb * RWKVX_QK), *mw = dw + nb;
    for (int64_t o = 0; o < w->n_rows; o++) {
        const uint8_t *group = (const uint8_t *)w->data + (size_t)(o / RWKVX_PACK_ROWS) * regions.group;
        for (int64_t b = 0; b < nb; b++)
            unpack_block(w->type, w->layout, group, &regions, b, (int)(o % RWKVX_PACK_ROWS), q + b * RWKVX_QK, &dw[b],
                         &mw[b]);
        rwkvx_q8_row_products(q, dw, mw, rwkvx_packed_has_min(w->type), nb, x, y + o, ldy);
    }
    free(q);
}
