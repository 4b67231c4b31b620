"""OffloadRunner: one forward call executed by an OffloadPlan, CPU segments in the C core, device
segments and the head through the ops backend, crossing between them only where the plan says.

Per chunk of at most GPU_CHUNK_TOKENS tokens: embed on the CPU, run the plan's segments in order,
moving x (and v7's v_first) across the bus only when the next segment lives elsewhere, then the head
where it is placed (skipped for logits=None, last row only for "last").
"""
from __future__ import annotations

import numpy as np

from ..offload import GPU_CHUNK_TOKENS
from .residency import Residency
from .segment import DeviceHead, DeviceLayers


class OffloadRunner:
    def __init__(self, model, plan, ops, max_tokens: int = GPU_CHUNK_TOKENS):
        self.core, self.shape, self.plan, self.ops = model._core, model.shape, plan, ops
        self.max_tokens = max_tokens
        ops.activate()
        try:
            self._build(model, plan, ops, max_tokens)
        finally:
            ops.deactivate()
        self.residency = Residency(self.blocks)
        self.copies = 0  # host<->device transfers of activations or logits (for tests and benchmarks)

    def _build(self, model, plan, ops, max_tokens) -> None:
        self.steps = []  # ("cpu", begin, end) or ("gpu", DeviceLayers)
        for seg in plan.segments:
            if seg.where == "cpu":
                self.steps.append(("cpu", seg.begin, seg.end))
            else:
                self.steps.append(("gpu", DeviceLayers(ops, model, seg.begin, seg.end, max_tokens)))
        self.blocks = [step[1] for step in self.steps if step[0] == "gpu"]
        self.head = DeviceHead(ops, model, max_tokens) if plan.head_on_gpu else None
        C = self.shape.n_embd
        self.x_dev, self.v_first_dev = ops.empty((max_tokens, C)), ops.empty((max_tokens, C))

    def forward(self, ids: np.ndarray, state, logits: str | None):
        """Same contract as CoreModel.forward: updates `state` (an rwkvx.State); returns logits or None."""
        self.ops.activate()
        try:
            return self._forward(ids, state, logits)
        finally:
            self.ops.deactivate()

    def _forward(self, ids, state, logits):
        host_state = state._host_buffer()
        if self.blocks:
            self.residency.acquire(state)
        outputs = []
        for t0 in range(0, len(ids), self.max_tokens):
            chunk = ids[t0:t0 + self.max_tokens]
            last_chunk = t0 + len(chunk) == len(ids)
            want = "all" if logits == "all" else ("last" if logits == "last" and last_chunk else None)
            out = self._chunk(chunk, host_state, want)
            if out is not None:
                outputs.append(out)
        if self.blocks:
            self.residency.release_to(state)
        if logits is None:
            return None
        return outputs[-1][-1] if logits == "last" else np.concatenate(outputs)

    def _chunk(self, ids, host_state, want):
        ops, T = self.ops, len(ids)
        x = self.core.embed(ids)
        v_first = np.zeros_like(x)
        x_dev, vf_dev = ops.rows(self.x_dev, 0, T), ops.rows(self.v_first_dev, 0, T)
        on_device = False
        for step in self.steps:
            if step[0] == "cpu":
                if on_device:
                    self._down(x, x_dev, v_first, vf_dev)
                    on_device = False
                self.core.run_layers(step[1], step[2], x, v_first, host_state)
            else:
                if not on_device:
                    self._up(x_dev, x, vf_dev, v_first)
                    on_device = True
                step[1].run(x_dev, vf_dev)
        if want is None:
            return None
        rows = slice(0, T) if want == "all" else slice(T - 1, T)
        if self.head is not None:
            if not on_device:
                self._up(x_dev, x, None, None)
            logits_dev = self.head.run(ops.rows(x_dev, rows.start, rows.stop))
            out = np.empty((rows.stop - rows.start, self.shape.n_vocab), dtype=np.float32)
            ops.to_host(out, logits_dev)
            self.copies += 1
            return out
        if on_device:
            self._down(x, x_dev, None, None)
        return self.core.head(np.ascontiguousarray(x[rows]))

    def _carries_v_first(self) -> bool:
        return self.shape.arch == "v7"

    def _up(self, x_dev, x, vf_dev, v_first) -> None:
        self.ops.to_device(x_dev, x)
        if vf_dev is not None and self._carries_v_first():
            self.ops.to_device(vf_dev, v_first)
        self.copies += 1

    def _down(self, x, x_dev, v_first, vf_dev) -> None:
        self.ops.to_host(x, x_dev)
        if vf_dev is not None and self._carries_v_first():
            self.ops.to_host(v_first, vf_dev)
        self.copies += 1
