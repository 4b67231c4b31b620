# cython: language_level=3
"""C-backed byte trie for the RWKV World tokenizer (thin wrapper over
rwkvx/_kernels/tokenizer/world_trie.c). Use rwkvx.tokenizer, not this module."""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

import numpy as np

cdef extern from "tokenizer/world_trie.h" nogil:
    ctypedef struct rwkvx_world_trie:
        pass
    ctypedef enum rwkvx_trie_status:
        RWKVX_TRIE_OK
        RWKVX_TRIE_NO_MEMORY
        RWKVX_TRIE_EMPTY_KEY
        RWKVX_TRIE_DUPLICATE_KEY
        RWKVX_TRIE_BAD_TOKEN_ID
    rwkvx_world_trie *rwkvx_world_trie_build(const uint8_t *blob, const uint64_t *offsets,
                                             const int32_t *token_ids, size_t n_tokens,
                                             rwkvx_trie_status *status, size_t *bad_index)
    void rwkvx_world_trie_free(rwkvx_world_trie *trie)
    size_t rwkvx_world_trie_node_count(const rwkvx_world_trie *trie)
    int64_t rwkvx_world_trie_encode(const rwkvx_world_trie *trie, const uint8_t *text, size_t length,
                                    int32_t *out)

# Below this many input bytes, releasing and re-taking the GIL costs more than
# the encoding itself; above it, other Python threads get to run meanwhile.
cdef size_t GIL_RELEASE_MIN_BYTES = 4096

_BUILD_ERRORS = {
    RWKVX_TRIE_EMPTY_KEY: "token has no bytes",
    RWKVX_TRIE_DUPLICATE_KEY: "token has the same bytes as another token",
    RWKVX_TRIE_BAD_TOKEN_ID: "token id is negative",
}


cdef class WorldTrie:
    """Greedy longest-match byte trie.

    WorldTrie(keys, token_ids): keys is a sequence of non-empty bytes objects,
    token_ids a sequence of the same length of non-negative ints (< 2**31).
    Raises ValueError naming the offending key index, MemoryError if out of memory.
    """
    cdef rwkvx_world_trie *trie

    def __cinit__(self, keys, token_ids):
        self.trie = NULL
        if len(keys) != len(token_ids):
            raise ValueError(f"{len(keys)} keys but {len(token_ids)} token ids")
        cdef bytes blob_bytes = b"".join(keys)
        lengths = np.fromiter((len(k) for k in keys), dtype=np.uint64, count=len(keys))
        offsets_array = np.zeros(len(keys) + 1, dtype=np.uint64)
        np.cumsum(lengths, out=offsets_array[1:])
        ids_array = np.ascontiguousarray(token_ids, dtype=np.int64)
        if ids_array.size and (ids_array.min() < 0 or ids_array.max() > 2**31 - 1):
            bad = int(np.flatnonzero((ids_array < 0) | (ids_array > 2**31 - 1))[0])
            raise ValueError(f"key {bad}: token id {int(ids_array[bad])} is outside [0, 2**31)")
        ids32 = ids_array.astype(np.int32)

        cdef const uint8_t[::1] blob = blob_bytes if blob_bytes else b"\0"
        cdef const uint64_t[::1] offsets = offsets_array
        cdef const int32_t[::1] ids = ids32
        cdef rwkvx_trie_status status = RWKVX_TRIE_OK
        cdef size_t bad_index = 0
        cdef size_t n_tokens = len(keys)
        with nogil:
            self.trie = rwkvx_world_trie_build(&blob[0], &offsets[0], &ids[0] if n_tokens else NULL,
                                               n_tokens, &status, &bad_index)
        if self.trie == NULL:
            if status == RWKVX_TRIE_NO_MEMORY:
                raise MemoryError("out of memory while building the tokenizer trie")
            raise ValueError(f"key {bad_index} (token id {int(ids32[bad_index])}): "
                             f"{_BUILD_ERRORS.get(status, 'invalid')}")

    def __dealloc__(self):
        rwkvx_world_trie_free(self.trie)

    @property
    def node_count(self):
        """Number of trie nodes, the root included."""
        return rwkvx_world_trie_node_count(self.trie)

    def encode(self, const uint8_t[::1] text):
        """Greedy longest-match token ids of text (a bytes-like object).

        Returns a 1-D int32 NumPy array. Raises ValueError naming the byte
        offset where no token matches (only possible when some single byte
        value is missing from the vocabulary).
        """
        cdef size_t length = text.shape[0]
        out_array = np.empty(length, dtype=np.int32)
        if length == 0:
            return out_array
        cdef int32_t[::1] out = out_array
        cdef int64_t count
        if length >= GIL_RELEASE_MIN_BYTES:
            with nogil:
                count = rwkvx_world_trie_encode(self.trie, &text[0], length, &out[0])
        else:
            count = rwkvx_world_trie_encode(self.trie, &text[0], length, &out[0])
        if count < 0:
            position = -count - 1
            raise ValueError(f"no token starts with byte 0x{text[position]:02x} at offset {position}")
        return out_array[:count]
