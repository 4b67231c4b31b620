/* Portable product over the packed16 layout (packed.h): the oracle for the SIMD
 * kernels over that layout, and the fallback of levels that have none.
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

/* Row r's signed codes q[32], scale d and minimum m of block column c of a group. */
static void unpack_block(int type, const uint8_t *group, const rwkvx_packed_regions *regions, int64_t c, int r,
                         int8_t q[RWKVX_QK], float *d, float *m) {
    const uint8_t *column = group + (size_t)c * regions->column, *codes = column + regions->codes;
    *d = rwkvx_half_to_float(rwkvx_load_half(column + regions->d + 2 * (size_t)r));
    *m = rwkvx_packed_has_min(type) ? rwkvx_half_to_float(rwkvx_load_half(column + regions->m + 2 * (size_t)r)) : 0.0f;
    const int offset = rwkvx_type_code_offset(type);
    if (type == RWKVX_TYPE_Q8_0) {
        for (int j = 0; j < RWKVX_QK; j++) q[j] = (int8_t)(codes[64 * (j / 4) + 4 * r + j % 4] - offset);
        return;
    }
    uint64_t qh[4][2] = {{0}};
    if (rwkvx_packed_has_qh(type)) memcpy(qh, column + regions->qh, sizeof qh);
    for (int z = 0; z < 4; z++)
        for (int i = 0; i < 4; i++) {
            const uint8_t byte = codes[64 * z + 4 * r + i];
            const int bit = 4 * r + i;
            const int lo = (byte & 0x0f) | (int)(((qh[z][0] >> bit) & 1u) << 4);
            const int hi = (byte >> 4) | (int)(((qh[z][1] >> bit) & 1u) << 4);
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
            unpack_block(w->type, group, &regions, b, (int)(o % RWKVX_PACK_ROWS), q + b * RWKVX_QK, &dw[b], &mw[b]);
        rwkvx_q8_row_products(q, dw, mw, rwkvx_packed_has_min(w->type), nb, x, y + o, ldy);
    }
    free(q);
}
