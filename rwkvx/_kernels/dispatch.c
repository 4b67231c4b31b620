/* Kernel selection. Compiled with baseline flags only: it must run on every
 * CPU of the architecture, so it may name ISA-specific functions but never
 * execute their instructions itself.
 *
 * A level is usable when it was compiled (RWKVX_HAVE_<ISA>, defined by setup.py
 * when the *_<isa>.c files are built) and the CPU reports every instruction set
 * its files are built with, and the OS saves the registers they use (XCR0).
 */
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define RWKVX_X86 1
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#define RWKVX_ARM64_LINUX 1
#include <sys/auxv.h>
#endif

/* ---- CPU features ---------------------------------------------------------- */

#define RWKVX_FEATURES(X)                                                                     \
    X(sse42) X(avx) X(fma) X(f16c) X(avx2) X(os_ymm)                                          \
    X(avx512f) X(avx512dq) X(avx512bw) X(avx512vl) X(avx512_vnni) X(avx512_bf16) X(os_zmm) \
    X(avx_vnni) X(amx_tile) X(amx_int8) X(amx_bf16) X(neon) X(asimddp)

#define RWKVX_FEATURE_ENUM(name) FEATURE_##name,
enum { RWKVX_FEATURES(RWKVX_FEATURE_ENUM) N_FEATURES };
#undef RWKVX_FEATURE_ENUM
#define RWKVX_FEATURE_NAME(name) #name,
static const char *const feature_names[N_FEATURES] = {RWKVX_FEATURES(RWKVX_FEATURE_NAME)};
#undef RWKVX_FEATURE_NAME

static int features[N_FEATURES];
static int features_detected;

#ifdef RWKVX_X86
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    /* xgetbv by mnemonic: the assembler knows it whatever -m flags this file has */
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void detect_x86(void) {
    uint32_t a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const int osxsave = (c >> 27) & 1;
    features[FEATURE_sse42] = (c >> 20) & 1;
    features[FEATURE_avx] = (c >> 28) & 1;
    features[FEATURE_fma] = (c >> 12) & 1;
    features[FEATURE_f16c] = (c >> 29) & 1;
    const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    features[FEATURE_os_ymm] = (xcr0 & 0x6) == 0x6;    /* XMM and YMM state */
    features[FEATURE_os_zmm] = (xcr0 & 0xe6) == 0xe6;  /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (__get_cpuid_max(0, NULL) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    features[FEATURE_avx2] = (b >> 5) & 1;
    features[FEATURE_avx512f] = (b >> 16) & 1;
    features[FEATURE_avx512dq] = (b >> 17) & 1;
    features[FEATURE_avx512bw] = (b >> 30) & 1;
    features[FEATURE_avx512vl] = (b >> 31) & 1;
    features[FEATURE_avx512_vnni] = (c >> 11) & 1;
    features[FEATURE_amx_bf16] = (d >> 22) & 1;
    features[FEATURE_amx_tile] = (d >> 24) & 1;
    features[FEATURE_amx_int8] = (d >> 25) & 1;
    const uint32_t max_sub = a;
    if (max_sub >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        features[FEATURE_avx_vnni] = (a >> 4) & 1;
        features[FEATURE_avx512_bf16] = (a >> 5) & 1;
    }
}
#endif

static void detect_features(void) {
    if (features_detected) return;
#ifdef RWKVX_X86
    detect_x86();
#elif defined(RWKVX_ARM64_LINUX)
    const unsigned long hwcap = getauxval(AT_HWCAP);
#ifdef HWCAP_ASIMD
    features[FEATURE_neon] = (hwcap & HWCAP_ASIMD) != 0;
#else
    features[FEATURE_neon] = 1; /* old headers: ASIMD is part of the aarch64 baseline anyway */
#endif
#ifdef HWCAP_ASIMDDP
    features[FEATURE_asimddp] = (hwcap & HWCAP_ASIMDDP) != 0;
#endif
#elif defined(__aarch64__)
    features[FEATURE_neon] = 1; /* NEON is part of the aarch64 baseline */
#endif
    features_detected = 1;
}

int rwkvx_cpu_feature_count(void) { return N_FEATURES; }
const char *rwkvx_cpu_feature_name(int i) { return i >= 0 && i < N_FEATURES ? feature_names[i] : NULL; }
int rwkvx_cpu_feature_present(int i) {
    detect_features();
    return i >= 0 && i < N_FEATURES ? features[i] : 0;
}

/* ---- levels ------------------------------------------------------------------ */

static const rwkvx_kernel_table table_ref = {
    .isa = "scalar",
    .matmul = rwkvx_matmul_ref,
    .matmul_q8 = rwkvx_matmul_q8_ref,
    .matmul_q8_packed = rwkvx_matmul_q8_packed_ref,
    .prefers_packed = 0,
    .packed_layout = RWKVX_LAYOUT_PACKED16,
    .dequant_row = rwkvx_dequant_row_ref,
    .wkv7_heads = rwkvx_wkv7_heads_ref,
    .v7_gates = rwkvx_v7_gates_ref,
    .quantize_blocks = rwkvx_quantize_blocks_ref,
};
#ifdef RWKVX_HAVE_AVX2
static const rwkvx_kernel_table table_avx2 = {
    .isa = "avx2",
    .matmul = rwkvx_matmul_avx2,
    .matmul_q8 = rwkvx_matmul_q8_avx2,
    .matmul_q8_packed = rwkvx_matmul_q8_packed_avx2,
    .prefers_packed = 1,
    .packed_layout = RWKVX_LAYOUT_PACKED16_PLANES,
    .dequant_row = rwkvx_dequant_row_ref, /* one row per token: not worth a variant */
    .wkv7_heads = rwkvx_wkv7_heads_avx2,
    .v7_gates = rwkvx_v7_gates_avx2,
    .quantize_blocks = rwkvx_quantize_blocks_avx2,
};
#endif
#ifdef RWKVX_HAVE_AVX512
static const rwkvx_kernel_table table_avx512 = {
    .isa = "avx512",
    .matmul = rwkvx_matmul_avx512,
    .matmul_q8 = rwkvx_matmul_q8_avx512,
    .matmul_q8_packed = rwkvx_matmul_q8_packed_avx512,
    .prefers_packed = 1,
    .packed_layout = RWKVX_LAYOUT_PACKED16,
    .dequant_row = rwkvx_dequant_row_ref,
    .wkv7_heads = rwkvx_wkv7_heads_avx512,
    .v7_gates = rwkvx_v7_gates_avx512,
    .quantize_blocks = rwkvx_quantize_blocks_avx512,
};
#endif
#ifdef RWKVX_HAVE_NEON
static const rwkvx_kernel_table table_neon = {
    .isa = "neon",
    .matmul = rwkvx_matmul_neon,
    .matmul_q8 = rwkvx_matmul_q8_neon,
    .matmul_q8_packed = rwkvx_matmul_q8_packed_ref, /* no NEON kernel for it: never packed at this level */
    .prefers_packed = 0,
    .packed_layout = RWKVX_LAYOUT_PACKED16,
    .dequant_row = rwkvx_dequant_row_ref,
    .wkv7_heads = rwkvx_wkv7_heads_ref,
    .v7_gates = rwkvx_v7_gates_ref,
    .quantize_blocks = rwkvx_quantize_blocks_ref,
};
#endif

typedef struct level {
    const char *name;
    const rwkvx_kernel_table *table; /* NULL when not compiled */
} level;

/* Best first: the default is the first usable entry. */
static const level levels[] = {
#ifdef RWKVX_HAVE_AVX512
    {"avx512", &table_avx512},
#else
    {"avx512", NULL},
#endif
#ifdef RWKVX_HAVE_AVX2
    {"avx2", &table_avx2},
#else
    {"avx2", NULL},
#endif
#ifdef RWKVX_HAVE_NEON
    {"neon", &table_neon},
#else
    {"neon", NULL},
#endif
    {"scalar", &table_ref},
};
#define N_LEVELS (sizeof levels / sizeof levels[0])

static const level *find_level(const char *name) {
    for (size_t i = 0; i < N_LEVELS; i++)
        if (strcmp(levels[i].name, name) == 0) return &levels[i];
    return NULL;
}

int rwkvx_isa_supported(const char *name) {
    detect_features();
    if (strcmp(name, "scalar") == 0) return 1;
    if (strcmp(name, "avx2") == 0)
        return features[FEATURE_avx2] && features[FEATURE_fma] && features[FEATURE_f16c] && features[FEATURE_os_ymm];
    if (strcmp(name, "avx512") == 0)
#ifdef RWKVX_AVX512_EMULATED
        return rwkvx_isa_supported("avx2"); /* its files hold only AVX2 code (setup.py, RWKVX_EMULATE_AVX512) */
#else
        return rwkvx_isa_supported("avx2") && features[FEATURE_avx512f] && features[FEATURE_avx512bw] &&
               features[FEATURE_avx512vl] && features[FEATURE_avx512dq] && features[FEATURE_avx512_vnni] &&
               features[FEATURE_os_zmm];
#endif
    if (strcmp(name, "neon") == 0) return features[FEATURE_neon];
    return 0;
}

int rwkvx_isa_emulated(const char *name) {
#ifdef RWKVX_AVX512_EMULATED
    return strcmp(name, "avx512") == 0;
#else
    (void)name;
    return 0;
#endif
}

int rwkvx_isa_compiled(const char *name) {
    const level *l = find_level(name);
    return l != NULL && l->table != NULL;
}

const rwkvx_kernel_table *rwkvx_kernel_table_for(const char *name) {
    const level *l = find_level(name);
    return l != NULL && l->table != NULL && rwkvx_isa_supported(name) ? l->table : NULL;
}

const rwkvx_kernel_table *rwkvx_kernels = &table_ref;

int rwkvx_select_isa(const char *name) {
    if (name == NULL || name[0] == '\0') {
        for (size_t i = 0; i < N_LEVELS; i++) {
            const rwkvx_kernel_table *t = rwkvx_kernel_table_for(levels[i].name);
            if (t != NULL) {
                rwkvx_kernels = t;
                return RWKVX_ISA_OK;
            }
        }
        return RWKVX_ISA_OK; /* unreachable: scalar is always usable */
    }
    const level *l = find_level(name);
    if (l == NULL) return RWKVX_ISA_UNKNOWN;
    if (l->table == NULL) return RWKVX_ISA_NOT_COMPILED;
    if (!rwkvx_isa_supported(name)) return RWKVX_ISA_NOT_SUPPORTED;
    rwkvx_kernels = l->table;
    return RWKVX_ISA_OK;
}
