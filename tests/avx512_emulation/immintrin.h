/* <immintrin.h> for a test build whose AVX-512 kernels run on a CPU without AVX-512.
 *
 * setup.py puts this directory first on the include path of the *_avx512.c files when
 * RWKVX_EMULATE_AVX512=1 (tests/test_avx512_emulated.py). It includes the compiler's own header (for
 * the AVX2, FMA and F16C intrinsics those files also use, which the CPU runs natively), then SIMDe
 * (Debian's libsimde-dev), whose macros turn every _mm512_* intrinsic it implements into AVX2 or
 * plain C, then below the few SIMDe 0.7.4 lacks and one it gets wrong. An intrinsic defined by
 * neither reaches the compiler's own AVX-512 definition, which cannot be inlined without -mavx512f:
 * a compile error, never a stray AVX-512 instruction.
 *
 * Emulation checks what the kernels compute (lanes, masks, block layouts, edge sizes), not how fast.
 * The gaps below keep the hardware's results: conversions run the AVX/F16C instruction on each 256-bit
 * half, masked loads and stores touch only the lanes their mask selects (as the instructions do: a
 * masked-off lane past the end of a buffer must not be read), and the horizontal sums add in the order
 * GCC 12's own definitions do.
 */
#ifndef RWKVX_AVX512_EMULATION_IMMINTRIN_H
#define RWKVX_AVX512_EMULATION_IMMINTRIN_H

#include_next <immintrin.h>

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include <stdint.h>
#include <string.h>

#define RWKVX_EMU static inline __attribute__((always_inline))

/* 256-bit halves of a 512-bit vector, as native AVX types */
#define RWKVX_EMU_LO_PS(a) (simde__m512_to_private(a).m256[0])
#define RWKVX_EMU_HI_PS(a) (simde__m512_to_private(a).m256[1])
#define RWKVX_EMU_LO_SI(a) (simde__m512i_to_private(a).m256i[0])
#define RWKVX_EMU_HI_SI(a) (simde__m512i_to_private(a).m256i[1])

RWKVX_EMU simde__m512 rwkvx_emu_ps_from_halves(__m256 lo, __m256 hi) {
    simde__m512_private r;
    r.m256[0] = lo;
    r.m256[1] = hi;
    return simde__m512_from_private(r);
}

RWKVX_EMU simde__m512i rwkvx_emu_si_from_halves(__m256i lo, __m256i hi) {
    simde__m512i_private r;
    r.m256i[0] = lo;
    r.m256i[1] = hi;
    return simde__m512i_from_private(r);
}

RWKVX_EMU simde__m512 rwkvx_emu_cvtepi32_ps(simde__m512i a) {
    return rwkvx_emu_ps_from_halves(_mm256_cvtepi32_ps(RWKVX_EMU_LO_SI(a)), _mm256_cvtepi32_ps(RWKVX_EMU_HI_SI(a)));
}

RWKVX_EMU simde__m512i rwkvx_emu_cvttps_epi32(simde__m512 a) {
    return rwkvx_emu_si_from_halves(_mm256_cvttps_epi32(RWKVX_EMU_LO_PS(a)), _mm256_cvttps_epi32(RWKVX_EMU_HI_PS(a)));
}

RWKVX_EMU simde__m512 rwkvx_emu_cvtph_ps(simde__m256i a) {
    const simde__m256i_private p = simde__m256i_to_private(a);
    return rwkvx_emu_ps_from_halves(_mm256_cvtph_ps(p.m128i[0]), _mm256_cvtph_ps(p.m128i[1]));
}

/* the rounding immediate must stay a constant expression: a macro, not a function */
#define rwkvx_emu_cvtps_ph(a, rounding)                                                     \
    (__extension__({                                                                        \
        simde__m256i_private r_;                                                            \
        r_.m128i[0] = _mm256_cvtps_ph(RWKVX_EMU_LO_PS(a), (rounding));                      \
        r_.m128i[1] = _mm256_cvtps_ph(RWKVX_EMU_HI_PS(a), (rounding));                      \
        simde__m256i_from_private(r_);                                                      \
    }))

/* vpmovdb: the low byte of each int32 */
RWKVX_EMU simde__m128i rwkvx_emu_cvtepi32_epi8(simde__m512i a) {
    const simde__m512i_private p = simde__m512i_to_private(a);
    simde__m128i_private r;
    for (int i = 0; i < 16; i++) r.i8[i] = (int8_t)p.i32[i];
    return simde__m128i_from_private(r);
}

/* vfpclassps categories: bit 0 quiet NaN, 1 +0, 2 -0, 3 +inf, 4 -inf, 5 denormal, 6 negative finite,
 * 7 signalling NaN */
RWKVX_EMU simde__mmask16 rwkvx_emu_fpclass_ps_mask(simde__m512 a, int categories) {
    const simde__m512_private p = simde__m512_to_private(a);
    simde__mmask16 mask = 0;
    for (int i = 0; i < 16; i++) {
        uint32_t bits;
        memcpy(&bits, &p.f32[i], 4);
        const uint32_t exponent = (bits >> 23) & 0xff, fraction = bits & 0x7fffff, negative = bits >> 31;
        const int nan = exponent == 0xff && fraction != 0, inf = exponent == 0xff && fraction == 0;
        const int zero = exponent == 0 && fraction == 0, denormal = exponent == 0 && fraction != 0;
        const int belongs = (nan && (fraction >> 22)) << 0 | (zero && !negative) << 1 | (zero && negative) << 2 |
                            (inf && !negative) << 3 | (inf && negative) << 4 | denormal << 5 |
                            (negative && !nan && !inf && !zero) << 6 | (nan && !(fraction >> 22)) << 7;
        const int hit = (belongs & categories) != 0;
        if (hit) mask |= (simde__mmask16)(1u << i);
    }
    return mask;
}

/* The lanes of 16 that mask k selects, each `size` bytes, from src to dst; the others untouched. */
RWKVX_EMU void rwkvx_emu_copy_lanes(void *dst, const void *src, simde__mmask16 k, size_t size) {
    for (int i = 0; i < 16; i++)
        if ((k >> i) & 1) memcpy((char *)dst + size * i, (const char *)src + size * i, size);
}

RWKVX_EMU simde__m512 rwkvx_emu_maskz_loadu_ps(simde__mmask16 k, const void *p) {
    simde__m512_private r;
    memset(&r, 0, sizeof r);
    rwkvx_emu_copy_lanes(&r, p, k, 4);
    return simde__m512_from_private(r);
}

RWKVX_EMU void rwkvx_emu_mask_storeu_ps(void *p, simde__mmask16 k, simde__m512 a) {
    const simde__m512_private v = simde__m512_to_private(a);
    rwkvx_emu_copy_lanes(p, &v, k, 4);
}

RWKVX_EMU simde__m256i rwkvx_emu_mm256_maskz_loadu_epi16(simde__mmask16 k, const void *p) {
    simde__m256i_private r;
    memset(&r, 0, sizeof r);
    rwkvx_emu_copy_lanes(&r, p, k, 2);
    return simde__m256i_from_private(r);
}

/* vandps with the sign bit clear, as the compiler's own _mm512_abs_ps: SIMDe 0.7.4's (x < 0 ? -x : x)
 * keeps -0.0 negative */
RWKVX_EMU simde__m512 rwkvx_emu_abs_ps(simde__m512 a) {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    return rwkvx_emu_ps_from_halves(_mm256_and_ps(RWKVX_EMU_LO_PS(a), magnitude),
                                    _mm256_and_ps(RWKVX_EMU_HI_PS(a), magnitude));
}

/* GCC 12's order: upper half + lower half, then upper quarter + lower quarter, then lanes {0,1} + {2,3},
 * then lane 0 + lane 1 */
RWKVX_EMU float rwkvx_emu_reduce_add_ps(simde__m512 a) {
    const simde__m512_private p = simde__m512_to_private(a);
    float eight[8], four[4];
    for (int i = 0; i < 8; i++) eight[i] = p.f32[8 + i] + p.f32[i];
    for (int i = 0; i < 4; i++) four[i] = eight[4 + i] + eight[i];
    return (four[0] + four[2]) + (four[1] + four[3]);
}

RWKVX_EMU int rwkvx_emu_reduce_add_epi32(simde__m512i a) {
    const simde__m512i_private p = simde__m512i_to_private(a);
    uint32_t sum = 0; /* wraps like the instructions; the order of integer sums does not matter */
    for (int i = 0; i < 16; i++) sum += (uint32_t)p.i32[i];
    return (int)sum;
}

/* SIMDe's own where it has one, replaced */
#undef _mm512_abs_ps
#define _mm512_abs_ps(a) rwkvx_emu_abs_ps(a)
/* missing from SIMDe 0.7.4 (or, for shuffle_f32x4, its alias) */
#define _mm512_cvtepi32_ps(a) rwkvx_emu_cvtepi32_ps(a)
#define _mm512_cvttps_epi32(a) rwkvx_emu_cvttps_epi32(a)
#define _mm512_cvtph_ps(a) rwkvx_emu_cvtph_ps(a)
#define _mm512_cvtps_ph(a, rounding) rwkvx_emu_cvtps_ph((a), (rounding))
#define _mm512_cvtepi32_epi8(a) rwkvx_emu_cvtepi32_epi8(a)
#define _mm512_fpclass_ps_mask(a, categories) rwkvx_emu_fpclass_ps_mask((a), (categories))
#define _mm512_maskz_loadu_ps(k, p) rwkvx_emu_maskz_loadu_ps((k), (p))
#define _mm512_mask_storeu_ps(p, k, a) rwkvx_emu_mask_storeu_ps((p), (k), (a))
#define _mm256_maskz_loadu_epi16(k, p) rwkvx_emu_mm256_maskz_loadu_epi16((k), (p))
#define _mm512_reduce_add_ps(a) rwkvx_emu_reduce_add_ps(a)
#define _mm512_reduce_add_epi32(a) rwkvx_emu_reduce_add_epi32(a)
#define _mm512_shuffle_f32x4(a, b, imm) simde_mm512_shuffle_f32x4((a), (b), (imm))

#endif /* RWKVX_AVX512_EMULATION_IMMINTRIN_H */
