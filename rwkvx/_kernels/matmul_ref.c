/* Portable reference matrix products over every weight type.
 *
 * Each weight row is dequantized once into a float buffer (exactly d*q (+m),
 * as the NumPy reference sees it) and then dotted with the T activation rows,
 * so a T-token call reuses each weight T times. The dot product runs in a
 * fixed order, whatever T is, so sequence mode equals one token at a time
 * bit for bit.
 */
#include <stdlib.h>
#include <string.h>

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
    case RWKVX_TYPE_Q4_0:
        for (int64_t b = 0; b < n / RWKVX_QK; b++)
            rwkvx_dequant_block_q4_0(src + b * sizeof(rwkvx_block_q4_0), out + b * RWKVX_QK);
        return;
    case RWKVX_TYPE_Q4_1:
        for (int64_t b = 0; b < n / RWKVX_QK; b++)
            rwkvx_dequant_block_q4_1(src + b * sizeof(rwkvx_block_q4_1), out + b * RWKVX_QK);
        return;
    case RWKVX_TYPE_Q5_0:
        for (int64_t b = 0; b < n / RWKVX_QK; b++)
            rwkvx_dequant_block_q5_0(src + b * sizeof(rwkvx_block_q5_0), out + b * RWKVX_QK);
        return;
    case RWKVX_TYPE_Q5_1:
        for (int64_t b = 0; b < n / RWKVX_QK; b++)
            rwkvx_dequant_block_q5_1(src + b * sizeof(rwkvx_block_q5_1), out + b * RWKVX_QK);
        return;
    case RWKVX_TYPE_Q8_0:
        for (int64_t b = 0; b < n / RWKVX_QK; b++)
            rwkvx_dequant_block_q8_0(src + b * sizeof(rwkvx_block_q8_0), out + b * RWKVX_QK);
        return;
    }
}

/* Eight interleaved partial sums, combined in a fixed tree: deterministic,
 * and short dependency chains let the compiler keep several multiplies in flight. */
static float dot_f32(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

void rwkvx_matmul_ref(const rwkvx_tensor *w, const float *x, int64_t ldx,
                      int64_t n_tokens, float *y, int64_t ldy) {
    float stack_row[1024];
    float *row = w->n_in <= 1024 ? stack_row : malloc((size_t)w->n_in * sizeof(float));
    if (row == NULL) abort(); /* allocation of one row: only on exhausted memory */
    for (int64_t o = 0; o < w->n_rows; o++) {
        rwkvx_dequant_row_ref(w, o, row);
        for (int64_t t = 0; t < n_tokens; t++) y[t * ldy + o] = dot_f32(row, x + t * ldx, w->n_in);
    }
    if (row != stack_row) free(row);
}
