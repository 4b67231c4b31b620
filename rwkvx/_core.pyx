# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin typed wrapper over the C forward pass (rwkvx/_kernels/rwkvx.h).

CoreModel holds an rwkvx_model whose tensor slots point into arrays kept
alive here (memory-mapped weights, canonicalized vectors). Every pointer and
size handed to C is checked first, so C never reads outside a buffer.
"""
from libc.stdint cimport int8_t, int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.stddef cimport size_t

import os

import numpy as np

from .errors import BackendError, StateError, TokenError

cdef extern from "pool.h" nogil:
    ctypedef struct rwkvx_pool:
        pass
    rwkvx_pool *rwkvx_pool_create(int32_t n_threads)
    void rwkvx_pool_destroy(rwkvx_pool *pool)
    int32_t rwkvx_pool_size(const rwkvx_pool *pool)
    ctypedef void (*rwkvx_task_fn)(void *ctx, int64_t begin, int64_t end)
    void rwkvx_pool_run(rwkvx_pool *pool, rwkvx_task_fn fn, void *ctx, int64_t n_items, int64_t grain)
    void rwkvx_pool_run_balanced(rwkvx_pool *pool, rwkvx_task_fn fn, void *ctx, int64_t n_items, int64_t grain)

cdef extern from *:
    """
    #include <pthread.h>
    /* pool_calls' task: every call logs its range and its thread, after work in proportion to its
     * items (items below `slow_below` cost three times as much, so that one share lags) */
    typedef struct rwkvx_call_log {
        int64_t *rows; /* [capacity][3]: begin, end, thread */
        int64_t capacity, count, spin_per_item, slow_below;
    } rwkvx_call_log;
    static void rwkvx_log_call(void *ctx, int64_t begin, int64_t end) {
        rwkvx_call_log *log = ctx;
        for (int64_t i = begin; i < end; i++)
            for (volatile int64_t k = 0; k < (i < log->slow_below ? 3 : 1) * log->spin_per_item; k++) {}
        const int64_t at = __atomic_fetch_add(&log->count, 1, __ATOMIC_RELAXED);
        if (at < log->capacity) {
            log->rows[3 * at] = begin;
            log->rows[3 * at + 1] = end;
            log->rows[3 * at + 2] = (int64_t)pthread_self();
        }
    }
    """
    ctypedef struct rwkvx_call_log:
        int64_t *rows
        int64_t capacity, count, spin_per_item, slow_below
    void rwkvx_log_call(void *ctx, int64_t begin, int64_t end) noexcept nogil

cdef extern from "rwkvx.h" nogil:
    enum: RWKVX_N_GLOBAL_SLOTS
    enum: RWKVX_N_LAYER_SLOTS
    enum: RWKVX_OK
    enum: RWKVX_ERR_ALLOC
    enum: RWKVX_ERR_TOKEN
    enum: RWKVX_ERR_ARGUMENT
    enum: RWKVX_LOGITS_NONE
    enum: RWKVX_LOGITS_LAST
    enum: RWKVX_LOGITS_ALL

    ctypedef struct rwkvx_tensor:
        const void *data
        int32_t type
        int32_t n_in
        int32_t n_rows
        int32_t layout

    ctypedef struct rwkvx_layer:
        rwkvx_tensor t[RWKVX_N_LAYER_SLOTS]

    ctypedef struct rwkvx_model:
        int32_t arch, n_vocab, n_embd, n_layer, n_ffn, n_head, head_size
        float group_norm_eps
        rwkvx_tensor globals[RWKVX_N_GLOBAL_SLOTS]
        rwkvx_layer *layers
        rwkvx_pool *pool
        int64_t parallel_min_bytes

    const char *const rwkvx_global_slot_names[]
    const char *const rwkvx_layer_slot_names[]
    size_t rwkvx_row_bytes(int type, size_t n)
    size_t rwkvx_state_floats_per_layer(const rwkvx_model *m)
    void rwkvx_init_state(const rwkvx_model *m, float *state)
    int rwkvx_forward(const rwkvx_model *m, const int32_t *tokens, int64_t n_tokens,
                      float *state, float *logits, int logits_mode)
    int rwkvx_forward_batch(const rwkvx_model *m, const int32_t *tokens, int64_t n_seq,
                            float *const *states, float *logits)
    int rwkvx_embed(const rwkvx_model *m, const int32_t *tokens, int64_t n_tokens, float *x)
    int rwkvx_run_layers(const rwkvx_model *m, int32_t layer_begin, int32_t layer_end,
                         float *x, float *v_first, int64_t n_tokens, float *state)
    int rwkvx_head(const rwkvx_model *m, const float *x, int64_t n_tokens, float *logits)

cdef extern from "phase_times.h" nogil:
    enum: RWKVX_N_PHASES
    const char *const rwkvx_phase_names[]
    int rwkvx_phase_times_read(double *seconds, int64_t *calls)
    void rwkvx_phase_times_reset()

cdef extern from "exp_poly.h" nogil:
    float rwkvx_exp_poly(float x)
    float rwkvx_sigmoid_poly(float x)

cdef extern from "packed.h" nogil:
    enum: RWKVX_LAYOUT_ROWS
    enum: RWKVX_LAYOUT_PACKED16
    enum: RWKVX_LAYOUT_PACKED16_PLANES
    int rwkvx_layout_is_packed(int layout)
    size_t rwkvx_packed_bytes(int type, int64_t n_in, int64_t n_rows)

cdef extern from "kernels.h" nogil:
    uint64_t rwkvx_read_stream(const void *data, size_t n_bytes, size_t near, size_t far, int streams, size_t window)
    ctypedef struct rwkvx_q8_acts:
        pass
    ctypedef void (*rwkvx_matmul_q8_fn)(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy)
    int rwkvx_type_is_quantized(int type)
    void rwkvx_matmul_q8_packed_ref(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy)
    void rwkvx_pack_matrix(rwkvx_pool *pool, const void *src, int type, int64_t n_in, int64_t n_rows, int layout,
                           void *dst)
    void rwkvx_copy_bytes(rwkvx_pool *pool, const void *src, size_t n_bytes, void *dst)
    void rwkvx_matmul_via_q8(rwkvx_matmul_q8_fn fn, const rwkvx_tensor *w, const float *x, int64_t ldx,
                             int64_t n_tokens, float *y, int64_t ldy)
    ctypedef void (*rwkvx_matmul_fn)(const rwkvx_tensor *w, const float *x, int64_t ldx,
                                     int64_t n_tokens, float *y, int64_t ldy)
    ctypedef struct rwkvx_v7_gates:
        const float *w0
        const float *a0
        const float *k_k
        const float *k_a
        const float *v0
        const float *v_first
        const float *v_mix
        float *w
        float *alpha
        float *k
        float *v
        float *kk
        float *a
        float *b
    ctypedef struct rwkvx_kernel_table:
        const char *isa
        rwkvx_matmul_fn matmul
        rwkvx_matmul_q8_fn matmul_q8_packed
        int prefers_packed
        int packed_layout
        void (*wkv7_heads)(int64_t n_tokens, int64_t n_head, int64_t head_size, int64_t h_begin, int64_t h_end,
                           const float *r, const float *w, const float *k, const float *v, const float *a,
                           const float *b, float *state, float *y) nogil
        void (*v7_gates)(int64_t h_begin, int64_t h_end, int64_t head_size, const rwkvx_v7_gates *g) nogil
        void (*quantize_blocks)(const float *x, int64_t n_blocks, int8_t *q, float *d_stored, float *d_exact,
                                int32_t *sum) nogil
    const rwkvx_kernel_table *rwkvx_kernels
    enum: RWKVX_ISA_OK
    enum: RWKVX_ISA_UNKNOWN
    enum: RWKVX_ISA_NOT_COMPILED
    enum: RWKVX_ISA_NOT_SUPPORTED
    int rwkvx_select_isa(const char *name)
    const rwkvx_kernel_table *rwkvx_kernel_table_for(const char *name)
    int rwkvx_isa_compiled(const char *name)
    int rwkvx_isa_supported(const char *name)
    int rwkvx_isa_emulated(const char *name)
    int rwkvx_cpu_feature_count()
    const char *rwkvx_cpu_feature_name(int i)
    int rwkvx_cpu_feature_present(int i)

ARCH_IDS = {"v4": 4, "v5.1": 51, "v5.2": 52, "v6": 6, "v7": 7}
GLOBAL_SLOTS = tuple(rwkvx_global_slot_names[i].decode() for i in range(RWKVX_N_GLOBAL_SLOTS))
LAYER_SLOTS = tuple(rwkvx_layer_slot_names[i].decode() for i in range(RWKVX_N_LAYER_SLOTS))
_GLOBAL_INDEX = {name: i for i, name in enumerate(GLOBAL_SLOTS)}
_LAYER_INDEX = {name: i for i, name in enumerate(LAYER_SLOTS)}
_LOGITS_MODES = {None: RWKVX_LOGITS_NONE, "last": RWKVX_LOGITS_LAST, "all": RWKVX_LOGITS_ALL}


# Kernel levels, best first. RWKVX_ISA (read once, here, at import) forces one.
ISA_LEVELS = ("avx512", "avx2", "neon", "scalar")
ISA_ENV = "RWKVX_ISA"
# Products smaller than this (weight bytes x tokens) run on the calling thread:
# waking the pool costs more than it saves.
DEFAULT_PARALLEL_MIN_BYTES = 64 * 1024


def _select_isa_from_env():
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    status = rwkvx_select_isa(forced.encode())
    if status == RWKVX_ISA_OK:
        return forced or None
    why = {RWKVX_ISA_UNKNOWN: f"unknown level; valid values are {', '.join(ISA_LEVELS)}",
           RWKVX_ISA_NOT_COMPILED: f"this build has no {forced} kernels (compiled: {', '.join(compiled_isas())})",
           RWKVX_ISA_NOT_SUPPORTED: f"this CPU or OS does not support {forced} "
                                    f"(usable here: {', '.join(supported_isas())})"}[status]
    raise BackendError(f"{ISA_ENV}={os.environ[ISA_ENV]!r}: {why}")


def active_prefers_packed():
    """True if the active kernel level reads quantized matrices faster in the packed16 layout."""
    return bool(rwkvx_kernels.prefers_packed)


def active_isa():
    """Name of the kernel set in use ("scalar", "avx2", "avx512", "neon")."""
    return rwkvx_kernels.isa.decode()


def compiled_isas():
    """Levels this build has kernels for, best first (scalar always)."""
    return [name for name in ISA_LEVELS if rwkvx_isa_compiled(name.encode())]


def emulated_isas():
    """Levels whose kernels this build runs through emulation (a test build: setup.py's
    RWKVX_EMULATE_AVX512); empty in any normal build."""
    return [name for name in ISA_LEVELS if rwkvx_isa_emulated(name.encode())]


def supported_isas():
    """Levels both compiled and runnable on this CPU and OS, best first."""
    return [name for name in ISA_LEVELS if rwkvx_kernel_table_for(name.encode()) != NULL]


def cpu_features():
    """{feature name: bool} as detected by CPUID + XCR0 (x86) or HWCAP (aarch64)."""
    return {rwkvx_cpu_feature_name(i).decode(): bool(rwkvx_cpu_feature_present(i))
            for i in range(rwkvx_cpu_feature_count())}


FORCED_ISA = _select_isa_from_env()


def phase_times():
    """{step of a forward pass: (seconds, calls)} summed since the last reset, or None when this build does
    not time its steps (only one built with RWKVX_PHASE_TIMES=1 does: bench/phases.py)."""
    cdef double seconds[RWKVX_N_PHASES]
    cdef int64_t calls[RWKVX_N_PHASES]
    if not rwkvx_phase_times_read(seconds, calls):
        return None
    return {rwkvx_phase_names[i].decode(): (seconds[i], calls[i]) for i in range(RWKVX_N_PHASES)}


def reset_phase_times():
    """Zero the sums phase_times() reads (nothing to do in a build that does not time its steps)."""
    rwkvx_phase_times_reset()


def exp_poly(const float[::1] x, bint sigmoid=False):
    """exp(x), or 1 / (1 + exp(-x)) with sigmoid=True, elementwise as the layer code computes them
    (exp_poly.h; for tests). Returns float32 like x."""
    out = np.empty(x.shape[0], dtype=np.float32)
    cdef float[::1] o = out
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        o[i] = rwkvx_sigmoid_poly(x[i]) if sigmoid else rwkvx_exp_poly(x[i])
    return out


def read_bytes(const unsigned char[::1] buf, size_t prefetch_near=0, size_t prefetch_far=0, int streams=1,
               size_t window=0):
    """Read every byte of buf once, GIL released; returns the xor of its 8-byte words.

    A streaming-read probe for measuring memory bandwidth (the benchmark calls it from several
    Python threads at once); the xor keeps the compiler from skipping the reads. prefetch_near,
    prefetch_far: also ask for each line that many bytes ahead, into L1 and into L2 (0: not), as
    the matrix products do; streams: read buf as that many contiguous parts side by side (1, 2, 4 or
    8), as the AVX2 float products read a matrix at one token; window: that many bytes (whole 64-byte
    lines) at a time, window after window, as the products read one matrix after another (0: the
    whole buffer at once). None of them changes the result.
    """
    if streams not in (1, 2, 4, 8):
        raise ValueError(f"streams must be 1, 2, 4 or 8, got {streams}")
    cdef const unsigned char *p = &buf[0]
    cdef size_t n = <size_t>buf.shape[0]
    cdef uint64_t result
    with nogil:
        result = rwkvx_read_stream(p, n, prefetch_near, prefetch_far, streams, window)
    return result


cdef const rwkvx_kernel_table *_usable_table(str isa) except NULL:
    """The kernel table of a level, for the test hooks below; BackendError if it is not usable here."""
    cdef const rwkvx_kernel_table *table = rwkvx_kernel_table_for(isa.encode())
    if table == NULL:
        raise BackendError(f"kernel level {isa!r} is not usable here (usable: {', '.join(supported_isas())})")
    return table


def matmul_with(str isa, int type_id, raw, int n_in, int n_rows, const float[:, ::1] x):
    """y float32 [T, n_rows] = W x[t] with one level's kernel (for tests and benchmarks).

    raw: uint8 buffer of n_rows rows of n_in weights of type_id, at any byte offset.
    x: float32 [T, n_in]. Raises BackendError if the level is not usable here.
    """
    cdef const rwkvx_kernel_table *table = _usable_table(isa)
    cdef const unsigned char[::1] view = raw
    _check_matrix(type_id, view.shape[0], n_in, n_rows)
    _check_activations(x, n_in)
    cdef rwkvx_tensor w = _tensor_over(view, type_id, n_in, n_rows, RWKVX_LAYOUT_ROWS)
    out = np.empty((x.shape[0], n_rows), dtype=np.float32)
    cdef float[:, ::1] ov = out
    cdef int64_t T = x.shape[0]
    with nogil:
        table.matmul(&w, &x[0, 0], n_in, T, &ov[0, 0], n_rows)
    return out


def _aligned_empty(size_t n_bytes):
    """A uint8 array of n_bytes starting on a 64-byte boundary (a cache line; what aligned SIMD loads need)."""
    base = np.empty(n_bytes + 64, dtype=np.uint8)
    start = (-base.ctypes.data) % 64
    return base[start : start + n_bytes]


# The packed layouts (rwkvx/_kernels/packed.h): Q5 types' fifth bits as row masks or as bit planes.
PACKED16 = RWKVX_LAYOUT_PACKED16
PACKED16_PLANES = RWKVX_LAYOUT_PACKED16_PLANES


def packed_layout(str isa=None):
    """The packed layout a model packs into at a level (None: the active one): the one its product reads."""
    return (rwkvx_kernels if isa is None else _usable_table(isa)).packed_layout


def _check_packed_layout(int layout):
    if layout not in (PACKED16, PACKED16_PLANES):
        raise ValueError(f"unknown packed layout {layout}")


def pack_matrix(int type_id, raw, int n_in, int n_rows, layout=None):
    """A quantized matrix in file layout rewritten into a packed layout (rwkvx/_kernels/packed.h; None:
    the active level's), as a new 64-byte-aligned uint8 array (for tests; models pack through
    CoreModel.pack)."""
    cdef const unsigned char[::1] view = raw
    cdef int chosen = packed_layout() if layout is None else layout
    _check_packed_layout(chosen)
    _check_matrix(type_id, view.shape[0], n_in, n_rows)
    if not rwkvx_type_is_quantized(type_id):
        raise ValueError("only quantized matrices have a packed layout")
    out = _aligned_empty(rwkvx_packed_bytes(type_id, n_in, n_rows))
    cdef unsigned char[::1] ov = out
    with nogil:
        rwkvx_pack_matrix(NULL, &view[0], type_id, n_in, n_rows, chosen, &ov[0])
    return out


def matmul_packed_with(str isa, int type_id, packed, int n_in, int n_rows, const float[:, ::1] x, layout=None):
    """y float32 [T, n_rows] = W x[t] with one level's product over a packed matrix (from pack_matrix, in
    `layout`; None: the one the level packs into, the only one its SIMD product reads, while the scalar
    level reads both); x float32 [T, n_in]. Raises BackendError if the level is not usable here."""
    cdef const rwkvx_kernel_table *table = _usable_table(isa)
    cdef int chosen = table.packed_layout if layout is None else layout
    _check_packed_layout(chosen)
    # levels without a packed product of their own (scalar, neon) use the reference, which reads either layout
    if chosen != table.packed_layout and table.matmul_q8_packed != rwkvx_matmul_q8_packed_ref:
        raise ValueError(f"the {isa} product reads only its own packed layout ({table.packed_layout})")
    cdef const unsigned char[::1] view = packed
    if not rwkvx_type_is_quantized(type_id) or n_in <= 0 or n_rows <= 0 or n_in % 32:
        raise ValueError("a packed matrix is quantized, with n_in a positive multiple of 32")
    if <size_t>view.shape[0] != rwkvx_packed_bytes(type_id, n_in, n_rows):
        raise ValueError(f"packed has {view.shape[0]} bytes, expected {rwkvx_packed_bytes(type_id, n_in, n_rows)}")
    _check_activations(x, n_in)
    cdef rwkvx_tensor w = _tensor_over(view, type_id, n_in, n_rows, chosen)
    out = np.empty((x.shape[0], n_rows), dtype=np.float32)
    cdef float[:, ::1] ov = out
    cdef int64_t T = x.shape[0]
    with nogil:
        rwkvx_matmul_via_q8(table.matmul_q8_packed, &w, &x[0, 0], n_in, T, &ov[0, 0], n_rows)
    return out


def wkv7_with(str isa, const float[:, ::1] r, const float[:, ::1] w, const float[:, ::1] k,
              const float[:, ::1] v, const float[:, ::1] a, const float[:, ::1] b, float[:, :, ::1] state):
    """The v7 recurrence with one level's kernel (for tests): r, w, k, v, a, b float32 [T, H*S], state
    float32 [H, S, S] updated in place. Returns y float32 [T, H*S]."""
    cdef const rwkvx_kernel_table *table = _usable_table(isa)
    cdef int64_t T = r.shape[0], H = state.shape[0], S = state.shape[1]
    if T == 0 or state.shape[2] != S or r.shape[1] != H * S:
        raise ValueError("state must be [H, S, S] and r [T, H*S] with T > 0")
    for name, rows, cols in (("w", w.shape[0], w.shape[1]), ("k", k.shape[0], k.shape[1]),
                             ("v", v.shape[0], v.shape[1]), ("a", a.shape[0], a.shape[1]),
                             ("b", b.shape[0], b.shape[1])):
        if rows != T or cols != H * S:
            raise ValueError(f"{name} must be float32 [{T}, {H * S}]")
    y = np.empty((T, H * S), dtype=np.float32)
    cdef float[:, ::1] yv = y
    with nogil:
        table.wkv7_heads(T, H, S, 0, H, &r[0, 0], &w[0, 0], &k[0, 0], &v[0, 0], &a[0, 0], &b[0, 0],
                         &state[0, 0, 0], &yv[0, 0])
    return y


def v7_gates_with(str isa, int n_head, layer, rows, bint residual, heads=None):
    """One token of v7's vector work between products and recurrence with one level's code (for tests).

    layer: float32 [C] arrays w0, a0, k_k, k_a, v0; rows: float32 [C] arrays w, alpha, k, v (the low-rank
    and product outputs) and v_first, v_mix; C = n_head * head_size. residual=False is layer 0 (no
    value residual). heads: (begin, end) to compute only those heads' channels (default: all); the
    others are returned as given (kk, a, b: zeros). Returns new arrays (w, alpha, k, v, kk, a, b)."""
    cdef const rwkvx_kernel_table *table = _usable_table(isa)
    names = ("w0", "a0", "k_k", "k_a", "v0", "w", "alpha", "k", "v", "v_first", "v_mix")
    arrays = {name: np.array((layer | rows)[name], dtype=np.float32, copy=True).reshape(-1) for name in names}
    cdef int64_t C = arrays["w0"].shape[0]
    if n_head <= 0 or C % n_head or any(a.shape[0] != C for a in arrays.values()):
        raise ValueError("every array must hold n_head * head_size floats")
    cdef int64_t h_begin = 0 if heads is None else heads[0], h_end = n_head if heads is None else heads[1]
    if not 0 <= h_begin < h_end <= n_head:
        raise ValueError(f"heads must be a range within [0, {n_head})")
    out = {name: np.zeros(C, dtype=np.float32) for name in ("kk", "a", "b")}
    cdef float[::1] w0 = arrays["w0"], a0 = arrays["a0"], k_k = arrays["k_k"], k_a = arrays["k_a"]
    cdef float[::1] v0 = arrays["v0"], v_first = arrays["v_first"], v_mix = arrays["v_mix"]
    cdef float[::1] w = arrays["w"], alpha = arrays["alpha"], k = arrays["k"], v = arrays["v"]
    cdef float[::1] kk = out["kk"], a = out["a"], b = out["b"]
    cdef rwkvx_v7_gates g
    g.w0, g.a0, g.k_k, g.k_a = &w0[0], &a0[0], &k_k[0], &k_a[0]
    g.v0 = &v0[0] if residual else NULL
    g.v_first, g.v_mix = &v_first[0], &v_mix[0]
    g.w, g.alpha, g.k, g.v, g.kk, g.a, g.b = &w[0], &alpha[0], &k[0], &v[0], &kk[0], &a[0], &b[0]
    with nogil:
        table.v7_gates(h_begin, h_end, C // n_head, &g)
    return arrays["w"], arrays["alpha"], arrays["k"], arrays["v"], out["kk"], out["a"], out["b"]


def quantize_blocks_with(str isa, const float[::1] x):
    """Activations x float32 [32 n] quantized per 32-block with one level's routine (for tests): returns
    quants int8 [32 n], scales as stored float32 [n], unrounded scales float32 [n], sums int32 [n]."""
    cdef const rwkvx_kernel_table *table = _usable_table(isa)
    if x.shape[0] == 0 or x.shape[0] % 32:
        raise ValueError("x must hold a positive multiple of 32 floats")
    cdef int64_t n = x.shape[0] // 32
    q = np.empty(x.shape[0], dtype=np.int8)
    d_stored, d_exact = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    sums = np.empty(n, dtype=np.int32)
    cdef int8_t[::1] qv = q
    cdef float[::1] sv = d_stored, ev = d_exact
    cdef int32_t[::1] uv = sums
    with nogil:
        table.quantize_blocks(&x[0], n, &qv[0], &sv[0], &ev[0], &uv[0])
    return q, d_stored, d_exact, sums


cdef _check_matrix(int type_id, size_t n_bytes, int n_in, int n_rows):
    cdef size_t need = rwkvx_row_bytes(type_id, n_in) * <size_t>n_rows
    if n_in <= 0 or n_rows <= 0 or need == 0 or n_bytes != need:
        raise ValueError(f"buffer has {n_bytes} bytes, expected {need} for {n_rows} rows of {n_in}")


cdef _check_activations(const float[:, ::1] x, int n_in):
    if x.shape[0] == 0 or x.shape[1] != n_in:
        raise ValueError(f"x must be float32 [T, {n_in}] with T > 0")


cdef rwkvx_tensor _tensor_over(const unsigned char[::1] view, int type_id, int n_in, int n_rows, int layout):
    """A matrix over a checked buffer (for the test hooks' products)."""
    cdef rwkvx_tensor w
    w.data = &view[0]
    w.type, w.n_in, w.n_rows, w.layout = type_id, n_in, n_rows, layout
    return w


def pool_calls(int threads, int64_t n_items, int64_t grain, bint balanced, int64_t spin_per_item=0,
               int64_t slow_below=0, int runs=1):
    """The calls that `runs` runs on one fresh pool make (a test hook): for each run, int64
    [calls, 3] of begin, end and an id of the thread that made it, in the order they finished. Each
    item costs spin_per_item loop iterations, three times that below slow_below."""
    cdef rwkvx_pool *pool = rwkvx_pool_create(threads)
    if pool == NULL:
        raise BackendError(f"could not start {threads} threads")
    capacity = max(n_items, 1) + threads
    rows = np.zeros((runs, capacity, 3), dtype=np.int64)
    counts = np.zeros(runs, dtype=np.int64)
    cdef int64_t[:, :, ::1] view = rows
    cdef int64_t[::1] count_view = counts
    cdef rwkvx_call_log log
    cdef int r
    log.capacity, log.spin_per_item, log.slow_below = capacity, spin_per_item, slow_below
    with nogil:
        for r in range(runs):
            log.rows, log.count = &view[r, 0, 0], 0
            if balanced:
                rwkvx_pool_run_balanced(pool, rwkvx_log_call, &log, n_items, grain)
            else:
                rwkvx_pool_run(pool, rwkvx_log_call, &log, n_items, grain)
            count_view[r] = log.count
        rwkvx_pool_destroy(pool)
    return [rows[r, :min(counts[r], capacity)] for r in range(runs)]


def row_bytes(int type_id, size_t n):
    """Bytes of a row of n weights of the given type id (0 for an unknown type)."""
    return rwkvx_row_bytes(type_id, n)


cdef class CoreModel:
    """An rwkvx_model: shapes plus one pointer per tensor slot, kept valid by self._keep."""

    cdef rwkvx_model m
    cdef dict _keep
    cdef readonly size_t state_len

    def __cinit__(self, str arch, int n_vocab, int n_embd, int n_layer, int n_ffn, int n_head, int head_size,
                  threads=None, float group_norm_eps=64e-5):
        if arch not in ARCH_IDS:
            raise ValueError(f"unknown architecture {arch!r}")
        if min(n_vocab, n_embd, n_layer, n_ffn, n_head, head_size) <= 0 or n_head * head_size != n_embd:
            raise ValueError("inconsistent model shape")
        self.m.arch = ARCH_IDS[arch]
        self.m.n_vocab, self.m.n_embd, self.m.n_layer = n_vocab, n_embd, n_layer
        self.m.n_ffn, self.m.n_head, self.m.head_size = n_ffn, n_head, head_size
        self.m.group_norm_eps = group_norm_eps
        self.m.layers = <rwkvx_layer *>calloc(n_layer, sizeof(rwkvx_layer))
        if self.m.layers == NULL:
            raise MemoryError()
        self._keep = {}
        self.state_len = rwkvx_state_floats_per_layer(&self.m) * n_layer
        self.set_threads(threads)

    def __dealloc__(self):
        rwkvx_pool_destroy(self.m.pool)
        free(self.m.layers)

    def set_threads(self, threads=None, int64_t parallel_min_bytes=DEFAULT_PARALLEL_MIN_BYTES):
        """Use `threads` threads (the caller included) for matrix products; None: physical cores.

        The worker pool is created here, once, and lives as long as this object. Products of fewer
        than parallel_min_bytes (weight bytes x tokens) stay on the calling thread.
        """
        if threads is None:
            from .cpu import physical_cores
            threads = physical_cores()
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if parallel_min_bytes < 0:
            raise ValueError("parallel_min_bytes must be >= 0")
        cdef rwkvx_pool *pool = NULL
        if threads > 1:
            pool = rwkvx_pool_create(threads)
            if pool == NULL:
                raise BackendError(f"could not start {threads} threads")
        rwkvx_pool_destroy(self.m.pool)
        self.m.pool = pool
        self.m.parallel_min_bytes = parallel_min_bytes

    @property
    def threads(self):
        """Threads used for matrix products, the caller included."""
        return rwkvx_pool_size(self.m.pool)

    def set_tensor(self, int layer, str slot, array, int type_id, int n_in, int n_rows):
        """Point a slot at a C-contiguous buffer holding n_rows rows of n_in weights of type_id.

        layer -1 addresses the global slots. The buffer is kept alive by this object.
        """
        cdef rwkvx_tensor *t = self._slot(layer, slot)
        if n_in <= 0 or n_rows <= 0:
            raise ValueError(f"{slot}: empty tensor")
        cdef size_t need = rwkvx_row_bytes(type_id, n_in) * <size_t>n_rows
        if need == 0:
            raise ValueError(f"{slot}: unsupported type id {type_id} or row length {n_in}")
        cdef const unsigned char[::1] view = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if <size_t>view.shape[0] != need:
            raise ValueError(f"{slot}: buffer has {view.shape[0]} bytes, expected {need}")
        self._keep[layer, slot] = array
        t.data = &view[0]
        t.type, t.n_in, t.n_rows, t.layout = type_id, n_in, n_rows, RWKVX_LAYOUT_ROWS

    cdef rwkvx_tensor *_slot(self, int layer, str slot) except NULL:
        if layer == -1:
            if slot not in _GLOBAL_INDEX:
                raise KeyError(f"no global slot {slot!r}")
            return &self.m.globals[<int>_GLOBAL_INDEX[slot]]
        if not 0 <= layer < self.m.n_layer:
            raise IndexError(f"layer {layer} out of range")
        if slot not in _LAYER_INDEX:
            raise KeyError(f"no layer slot {slot!r}")
        return &self.m.layers[layer].t[<int>_LAYER_INDEX[slot]]

    def packed_size(self, int layer, str slot):
        """Bytes the slot's matrix takes in the packed16 layout; 0 if it is F32/F16 or already packed."""
        cdef rwkvx_tensor *t = self._slot(layer, slot)
        if t.data == NULL:
            raise ValueError(f"slot {slot!r} of layer {layer} is not set")
        if t.layout != RWKVX_LAYOUT_ROWS or not rwkvx_type_is_quantized(t.type):
            return 0
        return rwkvx_packed_bytes(t.type, t.n_in, t.n_rows)

    def pack(self, int layer, str slot, out=None):
        """Rewrite a quantized matrix slot into the packed16 layout (rwkvx/_kernels/packed.h) that the
        active kernels read faster, split over this model's threads. out: a writable uint8 buffer of
        packed_size() bytes starting on a 64-byte boundary (None: a new one). The slot then points at it,
        and this object keeps it instead of the original. Returns the bytes packed (0 if the slot holds
        an F32/F16 tensor or is already packed)."""
        cdef size_t n_bytes = self.packed_size(layer, slot)
        if n_bytes == 0:
            return 0
        cdef rwkvx_tensor *t = self._slot(layer, slot)
        packed = _aligned_empty(n_bytes) if out is None else out
        cdef unsigned char[::1] pv = packed
        if <size_t>pv.shape[0] != n_bytes or (<size_t>&pv[0]) % 64 != 0:
            raise ValueError(f"out must be {n_bytes} bytes on a 64-byte boundary")
        with nogil:
            rwkvx_pack_matrix(self.m.pool, t.data, t.type, t.n_in, t.n_rows, rwkvx_kernels.packed_layout, &pv[0])
        t.data = &pv[0]
        t.layout = rwkvx_kernels.packed_layout
        self._keep[layer, slot] = packed
        return n_bytes

    def copy_bytes(self, src, out):
        """out[:] = src (uint8 buffers of one size), split over this model's threads."""
        cdef const unsigned char[::1] sv = src
        cdef unsigned char[::1] ov = out
        if sv.shape[0] != ov.shape[0]:
            raise ValueError(f"copy of {sv.shape[0]} bytes into {ov.shape[0]}")
        if sv.shape[0] == 0:
            return
        with nogil:
            rwkvx_copy_bytes(self.m.pool, &sv[0], <size_t>sv.shape[0], &ov[0])

    def is_packed(self, int layer, str slot):
        return bool(rwkvx_layout_is_packed(self._slot(layer, slot).layout))

    def missing_slots(self, int layer):
        """Names of the slots of a layer (-1: global) that were never set."""
        if layer == -1:
            return [GLOBAL_SLOTS[i] for i in range(RWKVX_N_GLOBAL_SLOTS) if self.m.globals[i].data == NULL]
        return [LAYER_SLOTS[i] for i in range(RWKVX_N_LAYER_SLOTS) if self.m.layers[layer].t[i].data == NULL]

    def init_state(self, float[::1] state):
        if <size_t>state.shape[0] != self.state_len:
            raise ValueError(f"state has {state.shape[0]} floats, expected {self.state_len}")
        rwkvx_init_state(&self.m, &state[0])

    def forward(self, const int32_t[::1] tokens, float[::1] state, logits):
        """Run tokens [T] through the model, updating state [state_len] in place.

        logits: None (head skipped), "last" -> float32 [n_vocab], "all" -> float32 [T, n_vocab].
        """
        cdef int64_t T = tokens.shape[0]
        if T == 0:
            raise ValueError("no tokens")
        if <size_t>state.shape[0] != self.state_len:
            raise ValueError(f"state has {state.shape[0]} floats, expected {self.state_len}")
        cdef int mode = _LOGITS_MODES[logits]
        out = None
        cdef float *out_ptr = NULL
        cdef float[:, ::1] out_view
        if mode != RWKVX_LOGITS_NONE:
            out = np.empty((T if mode == RWKVX_LOGITS_ALL else 1, self.m.n_vocab), dtype=np.float32)
            out_view = out
            out_ptr = &out_view[0, 0]
        cdef int status
        with nogil:
            status = rwkvx_forward(&self.m, &tokens[0], T, &state[0], out_ptr, mode)
        self._raise_for(status, "rwkvx_forward")
        if mode == RWKVX_LOGITS_LAST:
            return out[0]
        return out

    def forward_batch(self, const int32_t[::1] tokens, list states, bint logits):
        """One token for each of B independent sequences: tokens [B], states a list of B distinct float32
        buffers [state_len], each updated in place. Returns logits float32 [B, n_vocab], or None when
        logits is False (head skipped). Each row equals forward() of that token on that state, bit for bit."""
        cdef int64_t B = tokens.shape[0]
        if B == 0:
            raise ValueError("no sequences")
        if len(states) != B:
            raise StateError(f"{B} tokens but {len(states)} states")
        cdef float **ptrs = <float **>malloc(<size_t>B * sizeof(float *))
        if ptrs == NULL:
            raise MemoryError("rwkvx: out of memory for the batch's state pointers")
        cdef float[::1] sv
        cdef int64_t b, c
        cdef int status
        cdef size_t span = self.state_len * sizeof(float)
        try:
            for b in range(B):
                sv = states[b]
                if <size_t>sv.shape[0] != self.state_len:
                    raise StateError(f"state {b} has {sv.shape[0]} floats, expected {self.state_len}")
                ptrs[b] = &sv[0]
                for c in range(b):  # two rows writing one buffer would race and differ from serial decoding
                    if <char *>ptrs[c] < <char *>ptrs[b] + span and <char *>ptrs[b] < <char *>ptrs[c] + span:
                        raise StateError(f"states {c} and {b} share memory: each sequence needs its own buffer")
            out = np.empty((B, self.m.n_vocab), dtype=np.float32) if logits else None
            status = self._forward_batch(tokens, B, ptrs, out)
        finally:
            free(ptrs)
        self._raise_for(status, "rwkvx_forward_batch")
        return out

    cdef int _forward_batch(self, const int32_t[::1] tokens, int64_t B, float **ptrs, object out):
        cdef float *out_ptr = NULL
        cdef float[:, ::1] ov
        if out is not None:
            ov = out
            out_ptr = &ov[0, 0]
        cdef int status
        with nogil:
            status = rwkvx_forward_batch(&self.m, &tokens[0], B, ptrs, out_ptr)
        return status

    cdef _raise_for(self, int status, str what):
        if status == RWKVX_ERR_TOKEN:
            raise TokenError(f"token id out of range [0, {self.m.n_vocab})")
        if status == RWKVX_ERR_ALLOC:
            raise MemoryError("rwkvx: out of memory for scratch buffers")
        if status != RWKVX_OK:
            raise BackendError(f"{what} failed with status {status}")

    # The pieces of forward(), for callers that run segments of layers elsewhere (GPU offload).

    def embed(self, const int32_t[::1] tokens):
        """tokens [T] -> x float32 [T, n_embd] = ln0(emb[tokens])."""
        cdef int64_t T = tokens.shape[0]
        if T == 0:
            raise ValueError("no tokens")
        x = np.empty((T, self.m.n_embd), dtype=np.float32)
        cdef float[:, ::1] xv = x
        cdef int status
        with nogil:
            status = rwkvx_embed(&self.m, &tokens[0], T, &xv[0, 0])
        self._raise_for(status, "rwkvx_embed")
        return x

    def run_layers(self, int begin, int end, float[:, ::1] x, float[:, ::1] v_first, float[::1] state):
        """Layers [begin, end) over x [T, n_embd] in place; v_first [T, n_embd] is v7's value residual
        (written by layer 0, read by later layers; any buffer for other architectures)."""
        cdef int64_t T = x.shape[0]
        if T == 0 or x.shape[1] != self.m.n_embd or v_first.shape[0] != T or v_first.shape[1] != self.m.n_embd:
            raise ValueError("x and v_first must both be float32 [T, n_embd] with T > 0")
        if <size_t>state.shape[0] != self.state_len:
            raise ValueError(f"state has {state.shape[0]} floats, expected {self.state_len}")
        if not 0 <= begin <= end <= self.m.n_layer:
            raise ValueError(f"bad layer range [{begin}, {end}) for {self.m.n_layer} layers")
        cdef int status
        with nogil:
            status = rwkvx_run_layers(&self.m, begin, end, &x[0, 0], &v_first[0, 0], T, &state[0])
        self._raise_for(status, "rwkvx_run_layers")

    def head(self, const float[:, ::1] x):
        """x [T, n_embd] -> logits float32 [T, n_vocab] = head(ln_out(x))."""
        cdef int64_t T = x.shape[0]
        if T == 0 or x.shape[1] != self.m.n_embd:
            raise ValueError("x must be float32 [T, n_embd] with T > 0")
        out = np.empty((T, self.m.n_vocab), dtype=np.float32)
        cdef float[:, ::1] ov = out
        cdef int status
        with nogil:
            status = rwkvx_head(&self.m, &x[0, 0], T, &ov[0, 0])
        self._raise_for(status, "rwkvx_head")
        return out
