# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin typed wrapper over the C forward pass (rwkvx/_kernels/rwkvx.h).

CoreModel holds an rwkvx_model whose tensor slots point into arrays kept
alive here (memory-mapped weights, canonicalized vectors). Every pointer and
size handed to C is checked first, so C never reads outside a buffer.
"""
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free
from libc.stddef cimport size_t

import numpy as np

from .errors import BackendError, TokenError

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

    ctypedef struct rwkvx_layer:
        rwkvx_tensor t[RWKVX_N_LAYER_SLOTS]

    ctypedef struct rwkvx_model:
        int32_t arch, n_vocab, n_embd, n_layer, n_ffn, n_head, head_size
        rwkvx_tensor globals[RWKVX_N_GLOBAL_SLOTS]
        rwkvx_layer *layers

    const char *const rwkvx_global_slot_names[]
    const char *const rwkvx_layer_slot_names[]
    size_t rwkvx_row_bytes(int type, size_t n)
    size_t rwkvx_state_floats_per_layer(const rwkvx_model *m)
    void rwkvx_init_state(const rwkvx_model *m, float *state)
    int rwkvx_forward(const rwkvx_model *m, const int32_t *tokens, int64_t n_tokens,
                      float *state, float *logits, int logits_mode)
    int rwkvx_embed(const rwkvx_model *m, const int32_t *tokens, int64_t n_tokens, float *x)
    int rwkvx_run_layers(const rwkvx_model *m, int32_t layer_begin, int32_t layer_end,
                         float *x, float *v_first, int64_t n_tokens, float *state)
    int rwkvx_head(const rwkvx_model *m, const float *x, int64_t n_tokens, float *logits)

cdef extern from "kernels.h" nogil:
    ctypedef struct rwkvx_kernel_table:
        const char *isa
    const rwkvx_kernel_table *rwkvx_kernels

ARCH_IDS = {"v4": 4, "v5.1": 51, "v5.2": 52, "v6": 6, "v7": 7}
GLOBAL_SLOTS = tuple(rwkvx_global_slot_names[i].decode() for i in range(RWKVX_N_GLOBAL_SLOTS))
LAYER_SLOTS = tuple(rwkvx_layer_slot_names[i].decode() for i in range(RWKVX_N_LAYER_SLOTS))
_GLOBAL_INDEX = {name: i for i, name in enumerate(GLOBAL_SLOTS)}
_LAYER_INDEX = {name: i for i, name in enumerate(LAYER_SLOTS)}
_LOGITS_MODES = {None: RWKVX_LOGITS_NONE, "last": RWKVX_LOGITS_LAST, "all": RWKVX_LOGITS_ALL}


def active_isa():
    """Name of the kernel set in use ("scalar", ...)."""
    return rwkvx_kernels.isa.decode()


def row_bytes(int type_id, size_t n):
    """Bytes of a row of n weights of the given type id (0 for an unknown type)."""
    return rwkvx_row_bytes(type_id, n)


cdef class CoreModel:
    """An rwkvx_model: shapes plus one pointer per tensor slot, kept valid by self._keep."""

    cdef rwkvx_model m
    cdef list _keep
    cdef readonly size_t state_len

    def __cinit__(self, str arch, int n_vocab, int n_embd, int n_layer, int n_ffn, int n_head, int head_size):
        if arch not in ARCH_IDS:
            raise ValueError(f"unknown architecture {arch!r}")
        if min(n_vocab, n_embd, n_layer, n_ffn, n_head, head_size) <= 0 or n_head * head_size != n_embd:
            raise ValueError("inconsistent model shape")
        self.m.arch = ARCH_IDS[arch]
        self.m.n_vocab, self.m.n_embd, self.m.n_layer = n_vocab, n_embd, n_layer
        self.m.n_ffn, self.m.n_head, self.m.head_size = n_ffn, n_head, head_size
        self.m.layers = <rwkvx_layer *>calloc(n_layer, sizeof(rwkvx_layer))
        if self.m.layers == NULL:
            raise MemoryError()
        self._keep = []
        self.state_len = rwkvx_state_floats_per_layer(&self.m) * n_layer

    def __dealloc__(self):
        free(self.m.layers)

    def set_tensor(self, int layer, str slot, array, int type_id, int n_in, int n_rows):
        """Point a slot at a C-contiguous buffer holding n_rows rows of n_in weights of type_id.

        layer -1 addresses the global slots. The buffer is kept alive by this object.
        """
        cdef rwkvx_tensor *t
        if layer == -1:
            if slot not in _GLOBAL_INDEX:
                raise KeyError(f"no global slot {slot!r}")
            t = &self.m.globals[<int>_GLOBAL_INDEX[slot]]
        else:
            if not 0 <= layer < self.m.n_layer:
                raise IndexError(f"layer {layer} out of range")
            if slot not in _LAYER_INDEX:
                raise KeyError(f"no layer slot {slot!r}")
            t = &self.m.layers[layer].t[<int>_LAYER_INDEX[slot]]
        if n_in <= 0 or n_rows <= 0:
            raise ValueError(f"{slot}: empty tensor")
        cdef size_t need = rwkvx_row_bytes(type_id, n_in) * <size_t>n_rows
        if need == 0:
            raise ValueError(f"{slot}: unsupported type id {type_id} or row length {n_in}")
        cdef const unsigned char[::1] view = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if <size_t>view.shape[0] != need:
            raise ValueError(f"{slot}: buffer has {view.shape[0]} bytes, expected {need}")
        self._keep.append(array)
        t.data = &view[0]
        t.type, t.n_in, t.n_rows = type_id, n_in, n_rows

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
