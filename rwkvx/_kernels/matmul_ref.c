/* Portable reference matrix products over every weight type.
 *
 * F32/F16: each weight row is converted once into a float buffer and dotted
 * with the T float activation rows.
 * Quantized types: activations are quantized per 32-block (act_quant.c) and
 * each block contributes (float)(sum_j qw_j * qx_j) * (d_w * d_x), plus
 * m_w * s_x for the _1 types, summed over blocks in order. The integer block
 * sums are what every SIMD variant must reproduce exactly.
 * Either way the dot product runs in a fixed order, whatever T is, so
 * sequence mode equals one token at a time bit for bit.
 */
#include <stdlib.h>
#include <string.h>

#include "dot_lanes.h"
#include "kernels.h"

void rwkvx_dequant_row_ref(const rwkvx_tensor *w, int64_t row, float *out) {
    const int64_t n = w->n_in;
    const uint8_t *src = (const uint8_t *)w->data + (size_t)row * rwkvx_row_bytes(w->type, (size_t)n);
    switch (w->type) {
    case RWKVX_TYPE_F32:
        memcpy(out, src, (size_t)n * sizeof(float));
        return;
    case RWKVX_TYPE_F16:
        for (int64_t i = 0; i < n; i++) out[i] = rwkvx_half_to_float(rwkvx_load_half(src + 2 * i));
        return;
    default:
        for (int64_t b = 0; b < n / RWKVX_QK; b++) rwkvx_dequant_block(w->type, src, (size_t)b, out + b * RWKVX_QK);
        return;
    }
}

/* Block b of a quantized row as signed codes q[32] (weight = d*q (+ m)), with d and m. */
static void decode_block_ints(int type, const uint8_t *p, int8_t q[RWKVX_QK], float *d, float *m) {
    *m = 0.0f;
    switch (type) {
    case RWKVX_TYPE_Q8_0: {
        rwkvx_block_q8_0 b;
        memcpy(&b, p, sizeof b);
        *d = rwkvx_half_to_float(b.d);
        memcpy(q, b.qs, RWKVX_QK);
        return;
    }
    case RWKVX_TYPE_Q4_0:
    case RWKVX_TYPE_Q4_1: {
        const int has_m = type == RWKVX_TYPE_Q4_1;
        rwkvx_block_q4_1 b; /* Q4_0 is the same without m: read its fields by offset */
        *d = rwkvx_half_to_float(rwkvx_load_half(p));
        if (has_m) *m = rwkvx_half_to_float(rwkvx_load_half(p + 2));
        memcpy(b.qs, p + (has_m ? 4 : 2), sizeof b.qs);
        const int off = has_m ? 0 : 8;
        for (int j = 0; j < RWKVX_QK / 2; j++) {
            q[j] = (int8_t)((b.qs[j] & 0x0f) - off);
            q[j + RWKVX_QK / 2] = (int8_t)((b.qs[j] >> 4) - off);
        }
        return;
    }
    case RWKVX_TYPE_Q5_0:
    case RWKVX_TYPE_Q5_1: {
        const int has_m = type == RWKVX_TYPE_Q5_1;
        uint8_t qh[4], qs[RWKVX_QK / 2];
        *d = rwkvx_half_to_float(rwkvx_load_half(p));
        if (has_m) *m = rwkvx_half_to_float(rwkvx_load_half(p + 2));
        memcpy(qh, p + (has_m ? 4 : 2), 4);
        memcpy(qs, p + (has_m ? 8 : 6), sizeof qs);
        const uint32_t h = rwkvx_load_qh(qh);
        const int off = has_m ? 0 : 16;
        for (int j = 0; j < RWKVX_QK / 2; j++) {
            q[j] = (int8_t)(((qs[j] & 0x0f) | (int)(((h >> j) & 1u) << 4)) - off);
            q[j + RWKVX_QK / 2] = (int8_t)(((qs[j] >> 4) | (int)(((h >> (j + 16)) & 1u) << 4)) - off);
        }
        return;
    }
    }
}

void rwkvx_q8_row_products(const int8_t *q, const float *dw, const float *mw, int has_m, int64_t n_blocks,
                           const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    for (int64_t t = 0; t < x->n_tokens; t++) {
        const int8_t *qx = x->qs + t * x->stride_blocks * RWKVX_QK;
        const float *dx = x->dv + t * x->stride_blocks;
        const int32_t *aux = x->aux + t * x->stride_blocks;
        float acc = 0.0f;
        for (int64_t b = 0; b < n_blocks; b++) {
            int32_t isum = 0;
            for (int j = 0; j < RWKVX_QK; j++) isum += (int32_t)q[b * RWKVX_QK + j] * qx[b * RWKVX_QK + j];
            acc += (float)isum * (dw[b] * dx[b]);
            if (has_m) {
                float s;
                memcpy(&s, &aux[b], sizeof s);
                acc += mw[b] * s;
            }
        }
        y[t * ldy] = acc;
    }
}

void rwkvx_matmul_q8_ref(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    const int64_t nb = w->n_in / RWKVX_QK;
    const size_t block = rwkvx_row_bytes(w->type, RWKVX_QK);
    const int has_m = w->type == RWKVX_TYPE_Q4_1 || w->type == RWKVX_TYPE_Q5_1;
    int8_t *q = malloc((size_t)nb * RWKVX_QK + 2 * (size_t)nb * sizeof(float));
    if (q == NULL) abort(); /* one decoded row: only on exhausted memory */
    float *dw = (float *)(q + nb * RWKVX_QK), *mw = dw + nb;
    for (int64_t o = 0; o < w->n_rows; o++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)o * (size_t)nb * block;
        for (int64_t b = 0; b < nb; b++) decode_block_ints(w->type, row + b * block, q + b * RWKVX_QK, &dw[b], &mw[b]);
        rwkvx_q8_row_products(q, dw, mw, has_m, nb, x, y + o, ldy);
    }
    free(q);
}

void rwkvx_matmul_ref(const rwkvx_tensor *w, const float *x, int64_t ldx,
                      int64_t n_tokens, float *y, int64_t ldy) {
    if (rwkvx_type_is_quantized(w->type)) {
        rwkvx_matmul_via_q8(rwkvx_matmul_q8_ref, w, x, ldx, n_tokens, y, ldy);
        return;
    }
    float stack_row[1024];
    float *row = w->n_in <= 1024 ? stack_row : malloc((size_t)w->n_in * sizeof(float));
    if (row == NULL) abort(); /* allocation of one row: only on exhausted memory */
    for (int64_t o = 0; o < w->n_rows; o++) {
        rwkvx_dequant_row_ref(w, o, row);
        for (int64_t t = 0; t < n_tokens; t++) y[t * ldy + o] = dot_lanes(row, x + t * ldx, w->n_in);
    }
    if (row != stack_row) free(row);
}
