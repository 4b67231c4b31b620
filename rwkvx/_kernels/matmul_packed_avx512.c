/* AVX-512 VNNI products of packed16 quantized weights (packed.h) with
 * activations quantized per block (rwkvx_q8_acts).
 *
 * Int32 lane r of every vector is row r of the group: one vpdpbusd (64
 * unsigned codes x the 4 activation quants of one step, broadcast) advances
 * all 16 rows by 4 weights, so a block column of 16 rows costs 8 of them, and
 * its 16 scales arrive with one vcvtph2ps. No lane ever mixes rows, so nothing
 * is reduced across lanes.
 *
 * The float part repeats the scalar reference's operations in its order, per
 * row and block: acc += (float)isum * (d_w * d_x), then acc += m_w * s_x for
 * the _1 types (separate multiply and add, no FMA), so every output equals
 * rwkvx_matmul_q8_ref's bit for bit, for every T.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "packed.h"

#define FORCE_INLINE static inline __attribute__((always_inline))

/* Tokens that share one decoded block column. */
#ifndef P_TOKEN_TILE
#define P_TOKEN_TILE 4
#endif
/* Bytes ahead of the current block column that the stream is prefetched, at two
 * distances: into L1 just ahead of use, and into L2 further ahead, so that more lines
 * are in flight than the L1's fill buffers alone allow. Measured on a v7 1.5B-shaped run
 * of products (2 threads, all five types): one L1 distance peaked at 2048 bytes (1024:
 * 2-13% slower, 4096: 13% slower); adding the L2 one at 4096 streamed 7-10% faster again,
 * at the machine's plain-read bandwidth. */
#ifndef P_PREFETCH_L1_BYTES
#define P_PREFETCH_L1_BYTES 2048
#endif
#ifndef P_PREFETCH_L2_BYTES
#define P_PREFETCH_L2_BYTES 4096
#endif

FORCE_INLINE __m512i broadcast_u32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

FORCE_INLINE float load_f32(const void *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

/* Rows of one group (mask: the real ones) x tokens [t0, t0 + nt). */
FORCE_INLINE void group_tile(int type, const uint8_t *group, const rwkvx_packed_regions *regions, int64_t n_blocks,
                             const rwkvx_q8_acts *x, int64_t t0, int nt, float *y, int64_t ldy, __mmask16 rows) {
    const int has_m = rwkvx_packed_has_min(type), has_qh = rwkvx_packed_has_qh(type);
    const __m512i low4 = _mm512_set1_epi8(0x0f), bit5 = _mm512_set1_epi8(0x10);
    const int64_t stride = x->stride_blocks;
    __m512 acc[P_TOKEN_TILE];
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t c = 0; c < n_blocks; c++) {
        const uint8_t *column = group + (size_t)c * regions->column, *codes = column + regions->codes;
        /* the matrix is one stream (next columns, then next groups): the hardware prefetcher alone falls behind */
        for (size_t line = 0; line < regions->column; line += 64) {
            _mm_prefetch((const char *)(column + P_PREFETCH_L1_BYTES + line), _MM_HINT_T0);
            _mm_prefetch((const char *)(column + P_PREFETCH_L2_BYTES + line), _MM_HINT_T1);
        }
        /* two independent chains per token: half the latency of one long chain */
        __m512i sum_a[P_TOKEN_TILE], sum_b[P_TOKEN_TILE];
        for (int t = 0; t < nt; t++) {
            const int64_t i = (t0 + t) * stride + c;
            /* _0 types: start from -offset * sum(q_x), which turns the unsigned codes' dot into the signed one */
            sum_a[t] = has_m ? _mm512_setzero_si512() : broadcast_u32(x->aux + i);
            sum_b[t] = _mm512_setzero_si512();
        }
        if (type == RWKVX_TYPE_Q8_0) {
            for (int s = 0; s < 8; s += 2) {
                const __m512i v0 = _mm512_loadu_si512(codes + 64 * s);
                const __m512i v1 = _mm512_loadu_si512(codes + 64 * (s + 1));
                for (int t = 0; t < nt; t++) {
                    const int8_t *qx = x->qs + ((t0 + t) * stride + c) * RWKVX_QK;
                    sum_a[t] = _mm512_dpbusd_epi32(sum_a[t], v0, broadcast_u32(qx + 4 * s));
                    sum_b[t] = _mm512_dpbusd_epi32(sum_b[t], v1, broadcast_u32(qx + 4 * s + 4));
                }
            }
        } else {
            for (int z = 0; z < 4; z++) {
                const __m512i v = _mm512_loadu_si512(codes + 64 * z);
                __m512i lo = _mm512_and_si512(v, low4);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                if (has_qh) {
                    const uint8_t *qh = column + regions->qh + (size_t)z * 16;
                    uint64_t mask_lo, mask_hi;
                    memcpy(&mask_lo, qh, 8);
                    memcpy(&mask_hi, qh + 8, 8);
                    lo = _mm512_mask_add_epi8(lo, (__mmask64)mask_lo, lo, bit5);
                    hi = _mm512_mask_add_epi8(hi, (__mmask64)mask_hi, hi, bit5);
                }
                for (int t = 0; t < nt; t++) {
                    const int8_t *qx = x->qs + ((t0 + t) * stride + c) * RWKVX_QK;
                    sum_a[t] = _mm512_dpbusd_epi32(sum_a[t], lo, broadcast_u32(qx + 4 * z));
                    sum_b[t] = _mm512_dpbusd_epi32(sum_b[t], hi, broadcast_u32(qx + 16 + 4 * z));
                }
            }
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(column + regions->d)));
        const __m512 mw = has_m ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(column + regions->m)))
                                : _mm512_setzero_ps();
        for (int t = 0; t < nt; t++) {
            const int64_t i = (t0 + t) * stride + c;
            const __m512 isum = _mm512_cvtepi32_ps(_mm512_add_epi32(sum_a[t], sum_b[t]));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(isum, _mm512_mul_ps(dw, _mm512_set1_ps(x->dv[i]))));
            if (has_m) acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(mw, _mm512_set1_ps(load_f32(x->aux + i))));
        }
    }
    for (int t = 0; t < nt; t++) _mm512_mask_storeu_ps(y + (t0 + t) * ldy, rows, acc[t]);
}

FORCE_INLINE void packed_typed(int type, const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    const int64_t n_blocks = w->n_in / RWKVX_QK, T = x->n_tokens;
    const rwkvx_packed_regions regions = rwkvx_packed_layout(type, n_blocks);
    for (int64_t o = 0; o < w->n_rows; o += RWKVX_PACK_ROWS) {
        const uint8_t *group = (const uint8_t *)w->data + (size_t)(o / RWKVX_PACK_ROWS) * regions.group;
        const int64_t left = w->n_rows - o;
        const __mmask16 rows = left >= RWKVX_PACK_ROWS ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        int64_t t0 = 0;
        for (; t0 + P_TOKEN_TILE <= T; t0 += P_TOKEN_TILE)
            group_tile(type, group, &regions, n_blocks, x, t0, P_TOKEN_TILE, y + o, ldy, rows);
        switch (T - t0) { /* constant tile sizes keep the accumulators in registers */
#if P_TOKEN_TILE > 8
#error "P_TOKEN_TILE above 8 needs more remainder cases"
#endif
#if P_TOKEN_TILE > 4
        case 7: group_tile(type, group, &regions, n_blocks, x, t0, 7, y + o, ldy, rows); break;
        case 6: group_tile(type, group, &regions, n_blocks, x, t0, 6, y + o, ldy, rows); break;
        case 5: group_tile(type, group, &regions, n_blocks, x, t0, 5, y + o, ldy, rows); break;
        case 4: group_tile(type, group, &regions, n_blocks, x, t0, 4, y + o, ldy, rows); break;
#endif
        case 3: group_tile(type, group, &regions, n_blocks, x, t0, 3, y + o, ldy, rows); break;
        case 2: group_tile(type, group, &regions, n_blocks, x, t0, 2, y + o, ldy, rows); break;
        case 1: group_tile(type, group, &regions, n_blocks, x, t0, 1, y + o, ldy, rows); break;
        default: break;
        }
    }
}

void rwkvx_matmul_q8_packed_avx512(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    switch (w->type) {
    case RWKVX_TYPE_Q8_0: packed_typed(RWKVX_TYPE_Q8_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_1: packed_typed(RWKVX_TYPE_Q5_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_0: packed_typed(RWKVX_TYPE_Q5_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_1: packed_typed(RWKVX_TYPE_Q4_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_0: packed_typed(RWKVX_TYPE_Q4_0, w, x, y, ldy); return;
    default: return; /* only quantized types are ever packed */
    }
}
