/* How many int8 multiply-adds a second one core can do with the AVX2 packed kernel's instructions.
 *
 * usage: int8_ceiling ITERATIONS    prints: GHZ, then int8 multiply-adds per nanosecond for Q8_0, Q4_x, Q5_x
 *
 * The loops below issue, per block column of 8 rows, the instructions matmul_packed_avx2.c issues for a
 * tile of 4 tokens, with every operand already in a register: no loads of weights or activations, no
 * broadcasts, no scales, no float work. What they reach is therefore an upper bound on the kernel's
 * integer work, whatever its memory does. Without VNNI every 32 int8 products go through vpmaddubsw
 * (pairs into int16) and, now and then, vpmaddwd (into int32), and both compete for the same
 * multiply units:
 *   Q8_0  per 32 codes and token: vpsignb, vpmaddubsw, vpmaddwd, vpaddd (a pair may reach 32512, so
 *         every vpmaddubsw needs its own vpmaddwd), plus vpabsb of the codes shared by the tile;
 *   Q4_x  per 32 codes and token: vpmaddubsw, vpaddw; per 256: one vpmaddwd (8 pairs fit int16);
 *   Q5_x  as Q4_x, with a vpmaddwd per 128 codes (4 pairs fit) and a vpaddd to join the halves.
 * Empty asm statements tell the compiler that a step's codes have changed and that its sums are needed
 * right after it, so it can neither merge steps nor gather all multiplies first and spill their results
 * (they emit no instruction). The core's clock is taken from a chain of dependent integer adds (one
 * per cycle) timed in the same run.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define TOKENS 4 /* PA_TOKEN_TILE */
#define STEPS 8  /* 32-code vectors per block column of 8 rows (one half of a packed group) */
#define MACS_PER_ITERATION (TOKENS * STEPS * 32)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define CHANGED(v) __asm__ volatile("" : "+x"(v))

static double clock_ghz(long iterations) {
    long v = 0;
    const double start = now();
    for (long n = 0; n < iterations; n++)
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(v));
    return 4.0 * (double)iterations / (now() - start) / 1e9;
}

static volatile int sink;

static void keep(const __m256i *acc) {
    __m256i r = acc[0];
    for (int t = 1; t < TOKENS; t++) r = _mm256_xor_si256(r, acc[t]);
    sink = _mm256_extract_epi32(r, 0);
}

/* Seconds for `iterations` block columns of Q8_0 at 4 tokens. */
static double q8_0(long iterations) {
    __m256i codes = _mm256_set1_epi8(-37), acc[TOKENS], x[TOKENS];
    const __m256i ones = _mm256_set1_epi16(1);
    for (int t = 0; t < TOKENS; t++) {
        acc[t] = _mm256_setzero_si256();
        x[t] = _mm256_set1_epi8((char)(5 + t));
    }
    const double start = now();
    for (long n = 0; n < iterations; n++)
#pragma GCC unroll 8
        for (int s = 0; s < STEPS; s++) {
            CHANGED(codes);
            const __m256i magnitude = _mm256_abs_epi8(codes);
            for (int t = 0; t < TOKENS; t++) {
                const __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x[t], codes));
                acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(pairs, ones));
                CHANGED(acc[t]);
            }
        }
    const double seconds = now() - start;
    keep(acc);
    return seconds;
}

/* Seconds for `iterations` block columns of a 4-bit (pairs_per_madd 8) or 5-bit (4) type at 4 tokens. */
static inline __attribute__((always_inline)) double small_codes(long iterations, int pairs_per_madd) {
    __m256i codes = _mm256_set1_epi8(11), acc[TOKENS], pairs[TOKENS], x[TOKENS];
    const __m256i ones = _mm256_set1_epi16(1);
    for (int t = 0; t < TOKENS; t++) {
        acc[t] = _mm256_setzero_si256();
        x[t] = _mm256_set1_epi8((char)(5 + t));
    }
    const double start = now();
    for (long n = 0; n < iterations; n++) {
        for (int t = 0; t < TOKENS; t++) pairs[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int s = 0; s < STEPS; s++) {
            CHANGED(codes);
            for (int t = 0; t < TOKENS; t++) {
                pairs[t] = _mm256_add_epi16(pairs[t], _mm256_maddubs_epi16(codes, x[t]));
                CHANGED(pairs[t]);
            }
            if ((s + 1) % pairs_per_madd == 0)
                for (int t = 0; t < TOKENS; t++) {
                    acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(pairs[t], ones));
                    pairs[t] = _mm256_setzero_si256();
                }
        }
    }
    const double seconds = now() - start;
    keep(acc);
    return seconds;
}

/* the loops unrolled with a constant pairs_per_madd, as the kernel's are */
static double four_bit(long iterations) { return small_codes(iterations, 8); }
static double five_bit(long iterations) { return small_codes(iterations, 4); }

int main(int argc, char **argv) {
    const long iterations = argc > 1 ? atol(argv[1]) : 0;
    if (iterations <= 0) {
        fprintf(stderr, "usage: int8_ceiling ITERATIONS\n");
        return 2;
    }
    /* the clock before and after, and the faster of the two: a busy moment only lowers it */
    const double ghz_before = clock_ghz(iterations * 8);
    const double q8 = q8_0(iterations), q4 = four_bit(iterations), q5 = five_bit(iterations);
    const double ghz_after = clock_ghz(iterations * 8);
    const double ghz = ghz_before > ghz_after ? ghz_before : ghz_after;
    const double macs = (double)iterations * MACS_PER_ITERATION;
    printf("%.3f %.3f %.3f %.3f\n", ghz, macs / (q8 * 1e9), macs / (q4 * 1e9), macs / (q5 * 1e9));
    return 0;
}
