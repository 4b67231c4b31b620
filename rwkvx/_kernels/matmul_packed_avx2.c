/* AVX2 products of packed16 quantized weights (packed.h; Q5 types' fifth bits as
 * bit planes, RWKVX_LAYOUT_PACKED16_PLANES) with activations quantized per
 * block (rwkvx_q8_acts), for CPUs without VNNI.
 *
 * A 64-byte vector of a block column holds 4 codes of each of the group's 16
 * rows; its two 32-byte halves are rows 0-7 and 8-15, one ymm each. vpmaddubsw
 * of a half with the 4 activation quants of the step (broadcast) leaves two
 * int16 per row, and vpmaddwd with ones one int32 per row: as in the AVX-512
 * kernel, lane r is row r, so nothing is reduced across lanes and a column's 8
 * scales per half arrive with one vcvtph2ps. What the file layout spends per
 * row and block (spreading a scale, reducing lanes) is spent here per 8 rows.
 *
 * The int16 pairs are summed before vpmaddwd as far as they cannot overflow:
 * a pair is at most 2 * 15 * 127 = 3810 for 4-bit codes (8 pairs of a block
 * summed: 30480) and 2 * 31 * 127 = 7874 for 5-bit codes (4 summed: 31496);
 * activation quants are within [-127, 127]. Q8_0 codes are stored with offset
 * 128; this kernel takes them back to signed (xor 0x80) and uses the sign
 * trick (|q_w| unsigned, q_x carrying q_w's sign: a pair is at most
 * 2 * 128 * 127 = 32512), so Q8_0 needs no offset correction. Integer sums are
 * exact whatever their order.
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
#define HALF_ROWS 8

/* Parts of a matrix read side by side at one token, a group of each in turn, column by column. On an
 * AMD EPYC (Zen 3), one thread, a harness in /tmp streaming 2048 x 8192 matrices from memory (9 copies
 * cycled through, 41-61 passes alternating with the one-stream kernel, time over its time): 2 streams
 * Q4_0 0.84-0.88, Q4_1 0.90, Q5_0 0.86, Q5_1 0.77-0.81, Q8_0 0.86-0.91; 4 streams 0.84 / - / - / 0.70 /
 * 0.90; in L2 (512 x 768) 0.92-1.00. Two threads, bench/kernel_vs_read.py: 1.13-1.41 of a read -> 1.05-1.16. */
#ifndef PA_STREAMS
#define PA_STREAMS 2
#endif

/* Tokens that share one decoded half column when many tokens come at once. */
#ifndef PA_TOKEN_TILE
#define PA_TOKEN_TILE 4
#endif
/* Bytes ahead of the current block column prefetched into L1 and into L2 (the group is one stream).
 * Measured on an AMD EPYC (Zen 3), bench/kernel_vs_read.py (product time over the fastest read's, 2
 * threads, one token), 3-5 alternating rounds, 256/1024 against 2048/4096: Q8_0 2048 x 65536 1.13-1.17
 * against 1.24-1.26, 768 x 768 1.17-1.19 against 1.23-1.32, Q4_0 2048 x 65536 1.11-1.16 against
 * 1.15-1.21, Q4_1 1.14-1.20 against 1.16-1.34; 512/2048 between, none worse than either. The 5-bit
 * types once read better at 2048/4096, while their fifth bits cost a dozen instructions per 32 codes;
 * with the bit planes, 5 alternating rounds, medians: Q5_1 2048 x 65536 1.20 against 1.375, Q5_0 1.35
 * against 1.51, Q5_1 768 x 3072 1.315 against 1.28. */
#ifndef PA_PREFETCH_L1_BYTES
#define PA_PREFETCH_L1_BYTES 256
#endif
#ifndef PA_PREFETCH_L2_BYTES
#define PA_PREFETCH_L2_BYTES 1024
#endif

FORCE_INLINE __m256i broadcast_u32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

FORCE_INLINE float load_f32(const void *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

/* The fifth bits of code vector z's low (which = 0) or high nibbles at bit 4 of each byte, 0 elsewhere, from
 * the bit planes of a half (packed.h: bit 4 + z for the low nibbles, bit z for the high ones). Shifting 16-bit
 * lanes by at most 4 moves no bit of one byte into bit 4 of the other. */
FORCE_INLINE __m256i fifth_bits(__m256i planes, int z, int which) {
    __m256i at4;
    switch (which == 0 ? z : 4 + z) { /* constant shift counts */
    case 0: at4 = planes; break;
    case 1: at4 = _mm256_srli_epi16(planes, 1); break;
    case 2: at4 = _mm256_srli_epi16(planes, 2); break;
    case 3: at4 = _mm256_srli_epi16(planes, 3); break;
    case 4: at4 = _mm256_slli_epi16(planes, 4); break;
    case 5: at4 = _mm256_slli_epi16(planes, 3); break;
    case 6: at4 = _mm256_slli_epi16(planes, 2); break;
    default: at4 = _mm256_slli_epi16(planes, 1); break;
    }
    return _mm256_and_si256(at4, _mm256_set1_epi8(0x10));
}

/* Low (which = 0) or high nibbles of a half vector's codes, with their fifth bits (from the half's bit planes)
 * for Q5 types. */
FORCE_INLINE __m256i small_codes(int type, const uint8_t *column, const rwkvx_packed_regions *regions, __m256i planes,
                                 int z, int h, int which) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)(column + regions->codes + 64 * z + 32 * h));
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256i u = which == 0 ? _mm256_and_si256(v, low4) : _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
    if (rwkvx_packed_has_qh(type)) u = _mm256_or_si256(u, fifth_bits(planes, z, which));
    return u;
}

/* Block column c of a group (at `column`) into acc[hh][t], the sums of rows 8h..8h+7, h = h0 + hh in
 * [h0, h0 + nh), for x tokens [t0, t0 + nt). */
FORCE_INLINE void column_step(int type, const uint8_t *column, const rwkvx_packed_regions *regions,
                              const rwkvx_q8_acts *x, int64_t c, int64_t t0, int nt, int h0, int nh, int prefetch,
                              __m256 acc[][PA_TOKEN_TILE]) {
    const int has_m = rwkvx_packed_has_min(type);
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t stride = x->stride_blocks;
    if (prefetch)
        for (size_t line = 0; line < regions->column; line += 64) {
            _mm_prefetch((const char *)(column + PA_PREFETCH_L1_BYTES + line), _MM_HINT_T0);
            _mm_prefetch((const char *)(column + PA_PREFETCH_L2_BYTES + line), _MM_HINT_T1);
        }
    for (int hh = 0; hh < nh; hh++) {
        const int h = h0 + hh;
        __m256i isum[PA_TOKEN_TILE];
        if (type == RWKVX_TYPE_Q8_0) {
            const __m256i flip = _mm256_set1_epi8((char)0x80);
            for (int t = 0; t < nt; t++) isum[t] = _mm256_setzero_si256();
            for (int s = 0; s < 8; s++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(column + regions->codes + 64 * s + 32 * h));
                const __m256i q = _mm256_xor_si256(v, flip), q_abs = _mm256_abs_epi8(q);
                for (int t = 0; t < nt; t++) {
                    const int8_t *qx = x->qs + ((t0 + t) * stride + c) * RWKVX_QK;
                    const __m256i pairs = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(broadcast_u32(qx + 4 * s), q));
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(pairs, ones));
                }
            }
        } else if (rwkvx_packed_has_qh(type)) {
            /* 5-bit codes: 4 pairs at most per int16 lane, so low and high nibbles are summed apart */
            const __m256i planes = _mm256_loadu_si256((const __m256i *)(column + regions->qh + 32 * (size_t)h));
            for (int which = 0; which < 2; which++) {
                __m256i pairs[PA_TOKEN_TILE];
                for (int t = 0; t < nt; t++) pairs[t] = _mm256_setzero_si256();
                for (int z = 0; z < 4; z++) {
                    const __m256i u = small_codes(type, column, regions, planes, z, h, which);
                    for (int t = 0; t < nt; t++) {
                        const int8_t *qx = x->qs + ((t0 + t) * stride + c) * RWKVX_QK;
                        pairs[t] = _mm256_add_epi16(pairs[t],
                                                    _mm256_maddubs_epi16(u, broadcast_u32(qx + 16 * which + 4 * z)));
                    }
                }
                for (int t = 0; t < nt; t++) {
                    const __m256i part = _mm256_madd_epi16(pairs[t], ones);
                    isum[t] = which == 0 ? part : _mm256_add_epi32(isum[t], part);
                }
            }
        } else {
            /* 4-bit codes: all 8 pairs of a block fit one int16 lane */
            __m256i pairs[PA_TOKEN_TILE];
            for (int t = 0; t < nt; t++) pairs[t] = _mm256_setzero_si256();
            for (int z = 0; z < 4; z++) {
                const __m256i lo = small_codes(type, column, regions, _mm256_setzero_si256(), z, h, 0);
                const __m256i hi = small_codes(type, column, regions, _mm256_setzero_si256(), z, h, 1);
                for (int t = 0; t < nt; t++) {
                    const int8_t *qx = x->qs + ((t0 + t) * stride + c) * RWKVX_QK;
                    pairs[t] = _mm256_add_epi16(
                        pairs[t], _mm256_add_epi16(_mm256_maddubs_epi16(lo, broadcast_u32(qx + 4 * z)),
                                                   _mm256_maddubs_epi16(hi, broadcast_u32(qx + 16 + 4 * z))));
                }
            }
            for (int t = 0; t < nt; t++) isum[t] = _mm256_madd_epi16(pairs[t], ones);
        }
        if (type == RWKVX_TYPE_Q4_0 || type == RWKVX_TYPE_Q5_0)
            /* -offset * sum(q_x) turns the unsigned codes' dot into the signed one (added last: fewer
             * registers live in the loops above, and integer sums are exact in any order) */
            for (int t = 0; t < nt; t++)
                isum[t] = _mm256_add_epi32(isum[t], _mm256_set1_epi32(x->aux[(t0 + t) * stride + c]));
        const __m256 dw =
            _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(column + regions->d + 2 * HALF_ROWS * (size_t)h)));
        const __m256 mw = has_m ? _mm256_cvtph_ps(_mm_loadu_si128(
                                      (const __m128i *)(column + regions->m + 2 * HALF_ROWS * (size_t)h)))
                                : _mm256_setzero_ps();
        for (int t = 0; t < nt; t++) {
            const int64_t i = (t0 + t) * stride + c;
            const __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(dw, _mm256_set1_ps(x->dv[i])));
            acc[hh][t] = _mm256_add_ps(acc[hh][t], scaled);
            if (has_m) acc[hh][t] = _mm256_add_ps(acc[hh][t], _mm256_mul_ps(mw, _mm256_set1_ps(load_f32(x->aux + i))));
        }
    }
}

/* Rows 8h..8h+7 of a group, h in [h0, h0 + nh), x tokens [t0, t0 + nt): y[t][8h + r] for all 8 rows. */
FORCE_INLINE void half_tile(int type, const uint8_t *group, const rwkvx_packed_regions *regions, int64_t n_blocks,
                            const rwkvx_q8_acts *x, int64_t t0, int nt, int h0, int nh, int prefetch,
                            float out[][2 * HALF_ROWS]) {
    __m256 acc[2][PA_TOKEN_TILE];
    for (int h = 0; h < nh; h++)
        for (int t = 0; t < nt; t++) acc[h][t] = _mm256_setzero_ps();
    for (int64_t c = 0; c < n_blocks; c++)
        column_step(type, group + (size_t)c * regions->column, regions, x, c, t0, nt, h0, nh, prefetch, acc);
    for (int hh = 0; hh < nh; hh++)
        for (int t = 0; t < nt; t++) _mm256_storeu_ps(out[t] + HALF_ROWS * (h0 + hh), acc[hh][t]);
}

/* One token, PA_STREAMS whole groups (all 16 rows) at once, column by column: the groups lie in
 * PA_STREAMS far-apart parts of the matrix, so memory serves that many streams side by side. */
FORCE_INLINE void streams_one_token(int type, const uint8_t *const groups[PA_STREAMS],
                                    const rwkvx_packed_regions *regions, int64_t n_blocks, const rwkvx_q8_acts *x,
                                    float *const y[PA_STREAMS]) {
    __m256 acc[PA_STREAMS][2][PA_TOKEN_TILE];
    for (int s = 0; s < PA_STREAMS; s++)
        for (int h = 0; h < 2; h++) acc[s][h][0] = _mm256_setzero_ps();
    for (int64_t c = 0; c < n_blocks; c++)
        for (int s = 0; s < PA_STREAMS; s++)
            column_step(type, groups[s] + (size_t)c * regions->column, regions, x, c, 0, 1, 0, 2, 1, acc[s]);
    for (int s = 0; s < PA_STREAMS; s++)
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(y[s] + HALF_ROWS * h, acc[s][h][0]);
}

/* Tokens [t0, t0 + nt) of one group into y (only its n_real rows). */
FORCE_INLINE void group_tokens(int type, const uint8_t *group, const rwkvx_packed_regions *regions, int64_t n_blocks,
                               const rwkvx_q8_acts *x, int64_t t0, int nt, float *y, int64_t ldy, int64_t n_real) {
    float out[PA_TOKEN_TILE][2 * HALF_ROWS];
    if (nt == 1) {
        /* one token: both halves in one pass over the group, so each line is read once */
        half_tile(type, group, regions, n_blocks, x, t0, 1, 0, 2, 1, out);
    } else {
        /* more tokens: a half at a time keeps every accumulator in a register; the second pass
         * reads the group back from the caches */
        switch (nt) { /* constant tile sizes keep the accumulators in registers */
#if PA_TOKEN_TILE > 4
#error "PA_TOKEN_TILE above 4 needs more cases"
#endif
        case 4:
            half_tile(type, group, regions, n_blocks, x, t0, 4, 0, 1, t0 == 0, out);
            half_tile(type, group, regions, n_blocks, x, t0, 4, 1, 1, 0, out);
            break;
        case 3:
            half_tile(type, group, regions, n_blocks, x, t0, 3, 0, 1, t0 == 0, out);
            half_tile(type, group, regions, n_blocks, x, t0, 3, 1, 1, 0, out);
            break;
        default:
            half_tile(type, group, regions, n_blocks, x, t0, 2, 0, 1, t0 == 0, out);
            half_tile(type, group, regions, n_blocks, x, t0, 2, 1, 1, 0, out);
            break;
        }
    }
    for (int t = 0; t < nt; t++) memcpy(y + (t0 + t) * ldy, out[t], (size_t)n_real * sizeof(float));
}

/* One token over the whole groups of a matrix (n_groups of them), PA_STREAMS at a time from as many
 * parts; the groups left over, one at a time. */
FORCE_INLINE void whole_groups_one_token(int type, const uint8_t *data, const rwkvx_packed_regions *regions,
                                         int64_t n_blocks, int64_t n_groups, const rwkvx_q8_acts *x, float *y) {
    const int64_t part = n_groups / PA_STREAMS;
    for (int64_t g = 0; g < part; g++) {
        const uint8_t *groups[PA_STREAMS];
        float *outs[PA_STREAMS];
        for (int s = 0; s < PA_STREAMS; s++) {
            groups[s] = data + (size_t)(g + s * part) * regions->group;
            outs[s] = y + (g + s * part) * RWKVX_PACK_ROWS;
        }
        streams_one_token(type, groups, regions, n_blocks, x, outs);
    }
    for (int64_t g = PA_STREAMS * part; g < n_groups; g++)
        group_tokens(type, data + (size_t)g * regions->group, regions, n_blocks, x, 0, 1, y + g * RWKVX_PACK_ROWS, 0,
                     RWKVX_PACK_ROWS);
}

FORCE_INLINE void packed_typed(int type, const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    const int64_t n_blocks = w->n_in / RWKVX_QK, T = x->n_tokens;
    const rwkvx_packed_regions regions = rwkvx_packed_layout(type, n_blocks);
    if (T == 1) {
        /* the whole groups side by side in streams; a last partial group (padding rows not stored in y) below */
        const int64_t whole = w->n_rows / RWKVX_PACK_ROWS;
        whole_groups_one_token(type, (const uint8_t *)w->data, &regions, n_blocks, whole, x, y);
        if (whole * RWKVX_PACK_ROWS < w->n_rows)
            group_tokens(type, (const uint8_t *)w->data + (size_t)whole * regions.group, &regions, n_blocks, x, 0, 1,
                         y + whole * RWKVX_PACK_ROWS, ldy, w->n_rows - whole * RWKVX_PACK_ROWS);
        return;
    }
    for (int64_t o = 0; o < w->n_rows; o += RWKVX_PACK_ROWS) {
        const uint8_t *group = (const uint8_t *)w->data + (size_t)(o / RWKVX_PACK_ROWS) * regions.group;
        const int64_t left = w->n_rows - o, n_real = left < RWKVX_PACK_ROWS ? left : RWKVX_PACK_ROWS;
        for (int64_t t0 = 0; t0 < T;) {
            const int64_t rest = T - t0;
            const int nt = rest >= PA_TOKEN_TILE ? PA_TOKEN_TILE : (int)rest;
            group_tokens(type, group, &regions, n_blocks, x, t0, nt, y + o, ldy, n_real);
            t0 += nt;
        }
    }
}

void rwkvx_matmul_q8_packed_avx2(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    switch (w->type) {
    case RWKVX_TYPE_Q8_0: packed_typed(RWKVX_TYPE_Q8_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_1: packed_typed(RWKVX_TYPE_Q5_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_0: packed_typed(RWKVX_TYPE_Q5_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_1: packed_typed(RWKVX_TYPE_Q4_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_0: packed_typed(RWKVX_TYPE_Q4_0, w, x, y, ldy); return;
    default: return; /* only quantized types are ever packed */
    }
}
