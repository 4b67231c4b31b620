"""rwkvx.load and Model: an RWKV model ready to run on the CPU kernels."""
from __future__ import annotations

import mmap
import os
from typing import Iterable, Sequence

import numpy as np

from . import _core
from .architecture import (MATRIX_TENSORS, ModelShape, canonical_vector, default_group_norm_eps, expected_tensors,
                           infer_shape, layer_local_name)
from .errors import ArgumentError, BackendError, ModelFormatError, StateError, TokenError
from .formats.rwkvcpp import RwkvCppFile
from .state import State
from .token_ids import checked_token_ids

LOGITS_MODES = (None, "last", "all")

MOVE_SLICE_BYTES = 16 << 20

# The matrices rewritten into the packed layout when quantized: every large one a token reads.
PACKED_MATRICES = frozenset({"att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight",
                             "att.gate.weight", "ffn.key.weight", "ffn.value.weight", "ffn.receptance.weight",
                             "head.weight"})


class Model:
    """An RWKV model (v4, v5.1, v5.2, v6 or v7) whose weights stay memory-mapped.

    Attributes: arch, n_vocab, n_embd, n_layer, dtype (the file's main weight type: "FP32", "FP16",
    "Q4_0", ...), shape (rwkvx.architecture.ModelShape), path, threads, group_norm_eps (epsilon of the
    v5+ ln_x group norm: 64e-5 as the official implementation, except 1e-5 for v5.x models loaded from
    rwkv.cpp .bin files, as rwkv.cpp computes them; pass group_norm_eps= to choose).
    """

    def __init__(self, source: RwkvCppFile, threads: int | None = None, offload=None,
                 group_norm_eps: float | None = None, pack: bool | None = None):
        self.source = source
        self.path = source.path
        self.shape = infer_shape({name: info.shape for name, info in source.tensors.items()}, source.path)
        self.dtype = source.header.data_type.name
        self.threads = _resolve_threads(threads)
        self.group_norm_eps = (default_group_norm_eps(self.shape.arch, source.convention)
                               if group_norm_eps is None else _checked_eps(group_norm_eps))
        self._check_header(source)
        from .offload import Offload  # policy objects only: never imports pycuda

        if offload is not None and not isinstance(offload, Offload):
            raise ArgumentError(f"offload must be an rwkvx.Offload policy or None, got {offload!r}")
        self._core = self._build_core(source, self.shape, self.threads, self.group_norm_eps)
        self.offload_plan = (offload if offload is not None else Offload()).plan(self)
        self._runner = self.offload_plan.open(self)  # None when everything runs on the CPU
        self.packed_bytes = self._pack_cpu_matrices() if _resolve_pack(pack) else 0

    def _pack_cpu_matrices(self) -> int:
        """Move the matrices the CPU runs into memory laid out for its kernels; returns the bytes moved.

        Quantized layer matrices and head are rewritten into the packed layout; every other matrix
        (F32/F16, and the small low-rank ones whatever their type) is copied as it is. All of them land
        in one buffer of 2 MiB pages (see _huge_page_buffer). The embedding stays in the file: it is read
        a row at a time. The file's pages are handed back to the OS as each matrix is done (they stay in
        the page cache), so resident memory stays about the size of the file rather than twice it.
        """
        plan, source, core = self.offload_plan, self.source, self._core
        on_gpu = set(plan.gpu_layers)
        layer_matrices = sorted(MATRIX_TENSORS - {"emb.weight", "head.weight"})
        names = [(i, local, f"blocks.{i}.{local}") for i in range(self.n_layer) if i not in on_gpu
                 for local in layer_matrices]
        if not plan.head_on_gpu:
            names.append((-1, "head.weight", "head.weight"))
        release = getattr(source, "release", None)
        jobs = []
        for layer, local, name in names:
            if name not in source.tensors:
                continue
            info = source.tensors[name]
            is_float = info.type.name in ("FP32", "FP16")
            packs = not is_float and local in PACKED_MATRICES
            if not packs and (release is None or not is_float):
                # a source that cannot hand its memory back (a checkpoint converted in memory) would hold
                # the matrix twice for a 10-15% gain; a quantized low-rank matrix stays in file layout
                continue
            jobs.append((layer, local, name, packs, core.packed_size(layer, local) if packs else info.nbytes))
        offsets = np.cumsum([0] + [-(-job[-1] // 64) * 64 for job in jobs])  # each matrix on a cache line
        if offsets[-1] == 0:
            return 0
        arena = _huge_page_buffer(int(offsets[-1]))
        for (layer, local, name, packs, size), offset in zip(jobs, offsets):
            out = arena[offset:offset + size]
            if packs:
                core.pack(layer, local, out)
                if release is not None:
                    release(name)
            else:
                self._move(layer, local, name, out, release)
        return int(offsets[-1])

    def _move(self, layer: int, local: str, name: str, out: np.ndarray, release) -> None:
        """Copy a matrix into out a slice at a time (each split over the threads), each slice's file pages
        released once copied: the head of a large model is hundreds of MB, which would otherwise sit in
        memory twice at once."""
        info, raw = self.source.tensors[name], self.source.raw(name)
        for begin in range(0, raw.nbytes, MOVE_SLICE_BYTES):
            end = min(begin + MOVE_SLICE_BYTES, raw.nbytes)
            self._core.copy_bytes(raw[begin:end], out[begin:end])
            release(name, begin, end)
        self._core.set_tensor(layer, local, out, info.type.id, info.ne[0], info.n_elements // info.ne[0])

    arch = property(lambda self: self.shape.arch)
    n_vocab = property(lambda self: self.shape.n_vocab)
    n_embd = property(lambda self: self.shape.n_embd)
    n_layer = property(lambda self: self.shape.n_layer)

    def __repr__(self) -> str:
        return (f"<rwkvx.Model {self.arch} n_layer={self.n_layer} n_embd={self.n_embd} "
                f"n_vocab={self.n_vocab} dtype={self.dtype} path={self.path!r}>")

    @staticmethod
    def _check_header(source: RwkvCppFile) -> None:
        h, path = source.header, source.path
        emb = source.tensors["emb.weight"].shape
        layers = sum(1 for name in source.tensors if name.endswith(".ln1.weight"))
        for what, in_header, in_tensors in (("n_vocab", h.n_vocab, emb[0]), ("n_embd", h.n_embd, emb[1]),
                                            ("n_layer", h.n_layer, layers)):
            if in_header != in_tensors:
                raise ModelFormatError(
                    f"{path}: header says {what} = {in_header}, but the tensors say {in_tensors}"
                )

    @staticmethod
    def _build_core(source: RwkvCppFile, shape: ModelShape, threads: int, group_norm_eps: float) -> "_core.CoreModel":
        core = _core.CoreModel(shape.arch, shape.n_vocab, shape.n_embd, shape.n_layer, shape.n_ffn,
                               shape.n_head, shape.head_size, threads=threads, group_norm_eps=group_norm_eps)
        names = expected_tensors(shape)
        prefetch = getattr(source, "prefetch", None)  # files read from disk: ask for all vectors at once
        if prefetch is not None:
            for name in names:
                if layer_local_name(name) not in MATRIX_TENSORS:
                    prefetch(name)
        for name in names:
            info = source.tensors[name]
            local = layer_local_name(name)
            layer = int(name.split(".")[1]) if local != name else -1
            if local in MATRIX_TENSORS:
                n_rows = info.n_elements // info.ne[0]
                core.set_tensor(layer, local, source.raw(name), info.type.id, info.ne[0], n_rows)
            else:
                vector = canonical_vector(name, source.array(name), shape)
                core.set_tensor(layer, local, vector, 0, vector.size, 1)
        return core

    def new_state(self) -> State:
        """The architecture's initial state (zeros; v4's pp = -1e30)."""
        data = np.empty(self._core.state_len, dtype=np.float32)
        self._core.init_state(data)
        return State(data, self.shape, owner=self)

    def forward(self, tokens: int | Sequence[int], state: State | None = None, logits: str | None = "last",
                inplace: bool = False):
        """Feed tokens (one id or a sequence) after `state` (None: the initial state).

        logits: "last" -> float32 [n_vocab] for the last token; "all" -> float32 [len(tokens), n_vocab];
                None -> no logits: ln_out and the head are not computed at all.
        Returns (logits, new_state). The state passed in is left untouched unless inplace=True, in which case
        it is updated and returned (no copy: for hot decoding loops).
        """
        if logits not in LOGITS_MODES:
            raise ArgumentError(f"logits must be one of {LOGITS_MODES}, got {logits!r}")
        ids = checked_token_ids(tokens, self.n_vocab)
        if state is None:
            state = self.new_state()
        elif not isinstance(state, State):
            raise StateError(f"state must be an rwkvx.State (from model.new_state()), got {type(state).__name__}")
        else:
            state.check_fits(self.shape)
            if not inplace:
                state = state.copy()
        if self._runner is None:
            out = self._core.forward(ids, state.data, logits)
        else:
            out = self._runner.forward(ids, state, logits)
        return out, state

    def forward_batch(self, tokens: Sequence[int], states: Sequence[State | None], logits: bool = True,
                      inplace: bool = False):
        """Advance B independent sequences by one token each in one call (serving several conversations).

        tokens: B token ids, tokens[b] follows states[b] (None: the initial state). Each weight is read once
        for all B tokens, and every result is bit-identical to model.forward(tokens[b], states[b]).
        logits: True -> float32 [B, n_vocab]; False -> None (ln_out and the head are skipped).
        Returns (logits, list of B new states). The states passed in are left untouched unless inplace=True,
        in which case they are updated and returned (they must then be B distinct State objects).
        CPU only for now: a model with layers offloaded to a GPU raises BackendError.
        """
        if self._runner is not None:
            raise BackendError("forward_batch runs on the CPU only for now; load the model without offload")
        if not isinstance(logits, bool):
            raise ArgumentError(f"logits must be True or False, got {logits!r}")
        if isinstance(tokens, (int, np.integer)) or isinstance(states, State) or not isinstance(states, Iterable):
            raise TokenError("forward_batch takes a sequence of tokens and a sequence of states, one per sequence")
        ids = checked_token_ids(tokens, self.n_vocab)
        states = list(states)
        if len(states) != ids.size:
            raise StateError(f"{ids.size} tokens but {len(states)} states: one state per sequence")
        ready = []
        for b, state in enumerate(states):
            if state is None:
                state = self.new_state()
            elif not isinstance(state, State):
                raise StateError(f"state {b} must be an rwkvx.State (from model.new_state()) or None, "
                                 f"got {type(state).__name__}")
            else:
                state.check_fits(self.shape)
                if not inplace:
                    state = state.copy()
                elif any(state is other for other in ready):
                    raise StateError(f"state {b} appears twice: with inplace=True each sequence needs its own State")
            ready.append(state)
        out = self._core.forward_batch(ids, [state.data for state in ready], logits)
        return out, ready

    def generate(self, prompt, **kwargs):
        """Stream text after `prompt`: an iterator of str pieces. See rwkvx.generation.generate."""
        from .generation import generate

        return generate(self, prompt, **kwargs)


def _checked_eps(eps) -> float:
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ArgumentError(f"group_norm_eps must be a number in (0, 1), got {eps!r}")
    return float(eps)


def _resolve_threads(threads: int | None) -> int:
    if threads is None:
        from .cpu import physical_cores

        return physical_cores()
    if not isinstance(threads, int) or threads < 1:
        raise ArgumentError(f"threads must be a positive int or None, got {threads!r}")
    return threads


def _huge_page_buffer(n_bytes: int) -> np.ndarray:
    """A writable uint8 array of n_bytes in its own anonymous mapping, backed by 2 MiB pages where the
    kernel allows: streaming hundreds of MB per token through 4 KiB pages costs 10-15% of the memory
    bandwidth in TLB walks and in hardware prefetchers that stop at every page boundary."""
    buffer = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared memory would not get them
    if hasattr(buffer, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buffer, dtype=np.uint8)


def _resolve_pack(pack: bool | None) -> bool:
    if pack is None:
        return _core.active_prefers_packed()
    if not isinstance(pack, bool):
        raise ArgumentError(f"pack must be True, False or None, got {pack!r}")
    return pack


def load(path: str | os.PathLike, threads: int | None = None, offload=None, dtype: str | None = None,
         group_norm_eps: float | None = None, pack: bool | None = None) -> Model:
    """Load an rwkv.cpp .bin (memory-mapped) or a PyTorch .pth / .safetensors checkpoint (converted in memory).

    threads: CPU threads (None: one per physical core).
    offload: an rwkvx.Offload policy placing layers and the head on a GPU (default: all on the CPU).
    dtype: None keeps a .bin as stored and loads a checkpoint as FP32; "FP32", "FP16", "Q8_0", "Q5_1",
    "Q5_0", "Q4_1" or "Q4_0" stores the weights as that type on load (quantized as `rwkvx quantize` does).
    group_norm_eps: epsilon of the v5+ ln_x group norm; None follows the file's origin (see Model).
    pack: move the matrices into memory laid out for the kernels at load: quantized ones rewritten
    with 16 rows interleaved (about 3x less work per weight with AVX-512 or AVX2), all in 2 MiB pages.
    Costs one pass over the weights at load (a fraction of a second per GB); resident memory stays about
    the file's size. None: when the active kernel level has such a layout (avx2, avx512); False: weights stay
    memory-mapped and loading reads only the file's tensor table and vectors (v7 1.5B: ~0.05 s from the
    page cache, ~0.25 s from disk), the first token then paging the weights in. Packed quantized products
    give the scalar reference's results bit for bit; AVX2/AVX-512 products over the file's layout sum in another order, so
    pack=False there changes logits by float rounding (amplified a little through the layers).
    """
    from .formats.checkpoint import open_model_source

    return Model(open_model_source(path, dtype=dtype), threads=threads, offload=offload,
                 group_norm_eps=group_norm_eps, pack=pack)
