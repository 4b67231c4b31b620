/* Reference (scalar, portable) quantizers: float32 rows -> ggml blocks.
 *
 * These reproduce ggml's quantize_row_*_ref rounding bit for bit, so a file
 * quantized by rwkvx is byte-identical to one quantized by rwkv.cpp from the
 * same FP32 weights. Block layouts come from ../blocks.h.
 */
#ifndef RWKVX_QUANTIZE_H
#define RWKVX_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

/* One row of n floats (n % 32 == 0 for the block types) into packed blocks.
 * dst needs rwkvx_row_bytes(type, n) bytes and may be misaligned. */
void rwkvx_quantize_row_q4_0_ref(const float *src, uint8_t *dst, size_t n);
void rwkvx_quantize_row_q4_1_ref(const float *src, uint8_t *dst, size_t n);
void rwkvx_quantize_row_q5_0_ref(const float *src, uint8_t *dst, size_t n);
void rwkvx_quantize_row_q5_1_ref(const float *src, uint8_t *dst, size_t n);
void rwkvx_quantize_row_q8_0_ref(const float *src, uint8_t *dst, size_t n);
/* float32 -> IEEE binary16 (round to nearest even), little-endian bytes. */
void rwkvx_convert_row_f16_ref(const float *src, uint8_t *dst, size_t n);

/* n_rows contiguous rows of n_per_row floats of any type of enum rwkvx_type
 * (F32 is a plain copy). Returns the number of bytes written, or 0 if the
 * type is unknown or n_per_row is not a multiple of its block size. */
size_t rwkvx_quantize_rows_ref(int type, const float *src, size_t n_rows, size_t n_per_row, uint8_t *dst);

#endif /* RWKVX_QUANTIZE_H */
