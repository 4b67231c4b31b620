"""Offload: which layers and whether the model head run on a CUDA device, as an inspectable plan.

    policy = rwkvx.Offload(layers="all")            # every layer + the head (head="auto")
    policy = rwkvx.Offload(layers=8, head=False)    # the last 8 layers, head on the CPU
    policy = rwkvx.Offload(layers=[0, 1, 2, 3])     # explicit indices (here: the first four)
    policy = rwkvx.Offload.auto(max_memory=6 << 30) # fill 6 GiB, most time saved per byte first
    print(policy.plan(model))                       # what goes where, bytes, crossings per token

Choices, and why:

* `layers=N` offloads the **last** N layers, not the first N as rwkv.cpp does. The pipeline of one
  token is embed (CPU) -> layers 0..L-1 -> head -> logits (host). A GPU block that ends at the last
  layer and is followed by the head costs one host->device copy of x (and v7's v_first) and one
  device->host copy of the logits per call: 2 crossings. The first N layers plus the head cost 4.
  With logits=None the last-N block costs 1 crossing (nothing comes back; its state stays on the
  device), the first-N block 2.
* `head="auto"` puts the head on the device whenever any layer is there and it fits `max_memory`.
  The head is the largest single matrix and, placed right after the last offloaded layer, adds no
  crossing (rwkv.cpp's issue #106: -15% latency on a 14B model).
* `Offload.auto()` fills the budget in the order that saves the most time per byte: the head first
  (one large matrix-vector product: all streaming, one kernel launch, no recurrence), then layers
  from the last one backwards, so the device part stays one contiguous block ending at the last
  layer (2 crossings per token at most). It stops at the first layer that does not fit rather than
  skipping it, which would add crossings. If leaving the head out lets more bytes move (a head
  larger than the layers it displaces: small models with large vocabularies), it does that instead,
  so more memory never means fewer offloaded bytes.
* Embedding stays on the CPU (a row lookup: nothing to gain), as in rwkv.cpp.

Byte counts are what the device would hold: weights as stored in the file (quantized blocks are
uploaded as they are), small vectors as float32, each offloaded layer's recurrent state, and a
workspace for GPU_CHUNK_TOKENS tokens. From a loaded Model the weight sizes are exact; from a bare
ModelShape they follow rwkv.cpp's conversion and quantization rules for the given file type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .architecture import MATRIX_TENSORS, ModelShape, expected_tensors, layer_local_name
from .errors import RWKVError
from .formats.ggml_types import QUANTIZED_TYPES, ggml_type
from .formats.checkpoint import FP16_KEEP_SUBSTRINGS
from .formats.quantize import KEEP_NAMES, KEEP_SUBSTRINGS

GPU_CHUNK_TOKENS = 64  # tokens the device workspace is sized for; longer inputs run in chunks
FLOAT_BYTES = 4
FILE_TYPES = ("FP32", "FP16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")



class OffloadPolicyError(RWKVError, ValueError):
    """An Offload policy is malformed, names layers the model does not have, or exceeds max_memory."""


def _estimated_matrix_bytes(name: str, n_elements: int, file_type: str) -> int:
    """Bytes of a matrix in a file of the given main type, by rwkv.cpp's converter/quantizer rules."""
    source = "FP32" if file_type == "FP32" or any(f in name for f in FP16_KEEP_SUBSTRINGS) else "FP16"
    quantizable = name not in KEEP_NAMES and not any(f in name for f in KEEP_SUBSTRINGS)
    if file_type in QUANTIZED_TYPES and quantizable and not name.endswith("att.time_maa_w2"):  # 3-D: kept
        return ggml_type(file_type).nbytes(n_elements)
    return n_elements * (4 if source == "FP32" else 2)


def _vector_bytes(name: str, shape: ModelShape) -> int:
    return FLOAT_BYTES * shape.n_embd * (6 if name.endswith("att.x_rwkvag") else 1)


@dataclass(frozen=True)
class UnitSizes:
    """Device bytes of each offloadable unit: layers (weights + recurrent state) and the head."""

    layers: tuple[int, ...]
    head: int  # ln_out + head.weight
    workspace: int  # scratch for GPU_CHUNK_TOKENS tokens, needed once if anything is offloaded

    @classmethod
    def of(cls, model_or_shape, dtype: str | None = None) -> "UnitSizes":
        """From a loaded rwkvx.Model (exact), or a ModelShape plus its file type (dtype="Q5_1", ...)."""
        if isinstance(model_or_shape, ModelShape):
            shape, tensors = model_or_shape, None
            if dtype not in FILE_TYPES:
                raise OffloadPolicyError(f"planning from a ModelShape needs dtype, one of {FILE_TYPES}; got {dtype!r}")
        else:
            shape, tensors = model_or_shape.shape, model_or_shape.source.tensors
        layers = [shape.state_floats_per_layer * FLOAT_BYTES] * shape.n_layer
        head = 0
        for name, numpy_shape in expected_tensors(shape).items():
            local = layer_local_name(name)
            if local in MATRIX_TENSORS:
                n = 1
                for d in numpy_shape:
                    n *= d
                size = tensors[name].nbytes if tensors is not None else _estimated_matrix_bytes(name, n, dtype)
            else:
                size = _vector_bytes(name, shape)
            if name.startswith("blocks.") and ".ln0." not in name:
                layers[int(name.split(".")[1])] += size
            elif name in ("head.weight", "ln_out.weight", "ln_out.bias"):
                head += size
        return cls(tuple(layers), head, _workspace_bytes(shape))


def _workspace_bytes(shape: ModelShape) -> int:
    """Scratch rows the device segment allocates for GPU_CHUNK_TOKENS tokens (see cuda/segment.py)."""
    lora = max([d * (5 if name == "time_maa_w1" else 1) for name, d in shape.lora_dims] + [0])
    per_token = 20 * shape.n_embd + 2 * max(shape.n_ffn, lora) + shape.n_vocab
    return per_token * GPU_CHUNK_TOKENS * FLOAT_BYTES


@dataclass(frozen=True)
class Segment:
    """Layers [begin, end) that run on one device: "cpu" or "cuda:<index>"."""

    where: str
    begin: int
    end: int


@dataclass(frozen=True)
class OffloadPlan:
    """Where each layer and the head run, what the device holds, and how often data crosses the bus."""

    arch: str
    n_layer: int
    device: int
    gpu_layers: tuple[int, ...]
    head_on_gpu: bool
    sizes: UnitSizes

    @property
    def gpu_name(self) -> str:
        return f"cuda:{self.device}"

    @property
    def uses_gpu(self) -> bool:
        return bool(self.gpu_layers) or self.head_on_gpu

    @property
    def segments(self) -> tuple[Segment, ...]:
        """Maximal runs of consecutive layers on the same device, in layer order."""
        out: list[Segment] = []
        on_gpu = set(self.gpu_layers)
        for i in range(self.n_layer):
            where = self.gpu_name if i in on_gpu else "cpu"
            if out and out[-1].where == where:
                out[-1] = Segment(where, out[-1].begin, i + 1)
            else:
                out.append(Segment(where, i, i + 1))
        return tuple(out)

    @property
    def head_where(self) -> str:
        return self.gpu_name if self.head_on_gpu else "cpu"

    @property
    def gpu_bytes(self) -> int:
        """Bytes the device holds: offloaded layers (weights + state), the head, one workspace."""
        if not self.uses_gpu:
            return 0
        layer_bytes = sum(self.sizes.layers[i] for i in self.gpu_layers)
        return layer_bytes + (self.sizes.head if self.head_on_gpu else 0) + self.sizes.workspace

    @property
    def offloaded_fraction(self) -> float:
        """Share of the layer + head bytes that run on the device."""
        total = sum(self.sizes.layers) + self.sizes.head
        moved = sum(self.sizes.layers[i] for i in self.gpu_layers) + (self.sizes.head if self.head_on_gpu else 0)
        return moved / total

    def crossings(self, logits: bool = True) -> int:
        """Host<->device copies per forward call (any number of tokens: sequences cross as one block).

        The pipeline is embed (CPU) -> layers -> head -> logits to the host; with logits=False the head is
        skipped and nothing needs to come back (the device keeps its layers' state).
        """
        places = ["cpu"] + [s.where for s in self.segments]
        if logits:
            places += [self.head_where, "cpu"]
        return sum(1 for a, b in zip(places, places[1:]) if a != b)

    def describe(self) -> str:
        """A readable summary, as `rwkvx info --offload` prints it."""
        mib = 1 << 20
        lines = [f"offload plan for an RWKV {self.arch} model with {self.n_layer} layers:"]
        for s in self.segments:
            span = f"layer {s.begin}" if s.end - s.begin == 1 else f"layers {s.begin}-{s.end - 1}"
            lines.append(f"  {span:<16} on {s.where}")
        lines.append(f"  {'head':<16} on {self.head_where}")
        if self.uses_gpu:
            lines.append(f"  {self.gpu_name} holds {self.gpu_bytes / mib:.1f} MiB "
                         f"({self.offloaded_fraction:.0%} of layer and head weights, "
                         f"workspace {self.sizes.workspace / mib:.1f} MiB)")
        lines.append(f"  host<->device copies per call: {self.crossings(True)} with logits, "
                     f"{self.crossings(False)} with logits=None")
        return "\n".join(lines)

    __str__ = describe

    def open(self, model):
        """The runner that executes this plan for `model` (rwkvx/cuda/runner.py), or None if all is on the CPU.

        Raises rwkvx.cuda.errors.GPUUnavailableError if PyCUDA, the driver or the device is missing.
        """
        if not self.uses_gpu:
            return None
        from .cuda.backend import open_backend
        from .cuda.runner import OffloadRunner

        return OffloadRunner(model, self, open_backend(self.device))


class Offload:
    """A placement policy: which layers and whether the head run on CUDA device `device`.

    layers:     0 (none), N (the last N layers; N >= n_layer means all), "all", or a list of indices.
    head:       "auto" (on the device when any layer is and it fits max_memory), True, or False.
    device:     CUDA device index.
    max_memory: device bytes the plan may use (None: no limit for explicit layers; the device's free
                memory for Offload.auto()).
    """

    def __init__(self, layers: int | str | Iterable[int] = 0, head: bool | str = "auto", device: int = 0,
                 max_memory: int | None = None):
        self.layers = self._checked_layers(layers)
        if head not in ("auto", True, False):
            raise OffloadPolicyError(f"head must be 'auto', True or False, got {head!r}")
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            raise OffloadPolicyError(f"device must be a CUDA device index >= 0, got {device!r}")
        if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, int)
                                       or max_memory <= 0):
            raise OffloadPolicyError(f"max_memory must be a positive number of bytes or None, got {max_memory!r}")
        self.head, self.device, self.max_memory = head, device, max_memory
        self._auto = False

    @classmethod
    def auto(cls, max_memory: int | None = None, device: int = 0) -> "Offload":
        """Fill max_memory (None: the device's free memory) with the head, then layers from the last one."""
        policy = cls(layers=0, head="auto", device=device, max_memory=max_memory)
        policy._auto = True
        return policy

    def __repr__(self) -> str:
        if self._auto:
            return f"Offload.auto(max_memory={self.max_memory!r}, device={self.device})"
        return f"Offload(layers={self.layers!r}, head={self.head!r}, device={self.device}, max_memory={self.max_memory!r})"

    @staticmethod
    def _checked_layers(layers):
        if layers == "all":
            return "all"
        if isinstance(layers, bool):
            raise OffloadPolicyError("layers must be an int, 'all' or a list of layer indices, not a bool")
        if isinstance(layers, int):
            if layers < 0:
                raise OffloadPolicyError(f"layers must be >= 0, got {layers}")
            return layers
        if isinstance(layers, str):
            raise OffloadPolicyError(f"layers must be an int, 'all' or a list of layer indices, got {layers!r}")
        try:
            indices = list(layers)
        except TypeError:
            raise OffloadPolicyError(f"layers must be an int, 'all' or a list of layer indices, got {layers!r}") from None
        if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
            raise OffloadPolicyError(f"layer indices must be ints, got {indices!r}")
        if len(set(indices)) != len(indices):
            raise OffloadPolicyError(f"layer indices repeat: {indices!r}")
        return tuple(sorted(indices))

    def _gpu_layers(self, n_layer: int) -> tuple[int, ...]:
        if self.layers == "all":
            return tuple(range(n_layer))
        if isinstance(self.layers, int):
            n = min(self.layers, n_layer)
            return tuple(range(n_layer - n, n_layer))
        bad = [i for i in self.layers if not 0 <= i < n_layer]
        if bad:
            raise OffloadPolicyError(f"layer indices {bad} are outside [0, {n_layer}) for this model")
        return self.layers

    def plan(self, model, dtype: str | None = None, free_memory: int | None = None) -> OffloadPlan:
        """The placement for a loaded rwkvx.Model, or for a ModelShape whose file type is `dtype`.

        free_memory: device bytes available to Offload.auto() when max_memory is None (default: ask
        the device, which needs PyCUDA and a GPU).
        """
        sizes = UnitSizes.of(model, dtype)
        shape = model if isinstance(model, ModelShape) else model.shape
        make = lambda layers, head: OffloadPlan(shape.arch, shape.n_layer, self.device, tuple(layers), head, sizes)
        if self._auto:
            budget = self.max_memory
            if budget is None:
                budget = free_memory if free_memory is not None else _device_free_memory(self.device)
            return make(*_fill(sizes, budget))
        layers = self._gpu_layers(shape.n_layer)
        if self.head == "auto":
            head = bool(layers) and (self.max_memory is None or make(layers, True).gpu_bytes <= self.max_memory)
        else:
            head = self.head
        plan = make(layers, head)
        if self.max_memory is not None and plan.gpu_bytes > self.max_memory:
            raise OffloadPolicyError(
                f"the plan needs {plan.gpu_bytes} bytes on cuda:{self.device}, more than max_memory="
                f"{self.max_memory}; offload fewer layers or use Offload.auto(max_memory=...)"
            )
        return plan


def _fill(sizes: UnitSizes, budget: int) -> tuple[Sequence[int], bool]:
    """Offload.auto: head first, then layers from the last one back while they fit; unless leaving the
    head out offloads more bytes (a head bigger than the remaining budget's worth of layers, as in small
    models with big vocabularies), in which case layers only."""
    def layers_within(room: int) -> list[int]:
        taken: list[int] = []
        for i in reversed(range(len(sizes.layers))):
            if sizes.layers[i] > room:
                break
            room -= sizes.layers[i]
            taken.insert(0, i)
        return taken

    room = budget - sizes.workspace
    if room < 0:
        return (), False
    without_head = layers_within(room)
    if sizes.head > room:
        return without_head, False
    with_head = layers_within(room - sizes.head)
    moved = lambda layers: sum(sizes.layers[i] for i in layers)
    if moved(without_head) > moved(with_head) + sizes.head:
        return without_head, False
    return with_head, True


def _device_free_memory(device: int) -> int:
    from .cuda.driver import free_memory

    return free_memory(device)
