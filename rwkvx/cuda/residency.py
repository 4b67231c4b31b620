"""Device-resident state: the offloaded layers' state stays on the device between calls.

Decoding calls forward(token, state, inplace=True) over and over; copying every offloaded layer's
state down and up each time would cost (2+S)*C*4 bytes per layer and token (54 MB per token for a
14B model). Instead the device keeps the newest copy and the host State is marked as having a device
link. The State syncs when it is read (`state.data`, `copy()`, `layer(i)`), which also drops the link:
whatever the user does with the host buffer afterwards, the next call uploads it again.

The State side of the protocol (rwkvx/state.py): `_host_buffer()` returns the buffer without syncing,
`_attach_device(link)` stores the link, and reading `data` calls `link.pull(buffer)` once, then drops it.
"""
from __future__ import annotations

import weakref


class DeviceLink:
    """Handed to a State: copies the device's state of the offloaded layers into the host buffer."""

    def __init__(self, blocks):
        self.blocks = blocks  # DeviceLayers, each owning a slice of the state buffer
        self.valid = True  # False once the device buffers hold another State's values

    def pull(self, host_buffer) -> None:
        if not self.valid:
            raise RuntimeError("internal: a State's device link outlived its device copy")
        ops = self.blocks[0].ops
        ops.activate()  # may run outside a forward call (the user reading state.data)
        try:
            for block in self.blocks:
                begin, end = block.state_range
                block.save_state(host_buffer[begin:end])
        finally:
            ops.deactivate()
        self.valid = False


class Residency:
    """Which State (if any) the device state buffers currently belong to."""

    def __init__(self, blocks):
        self.blocks = blocks
        self._owner = None  # weakref to the State whose newest values are on the device
        self._link = None

    def acquire(self, state) -> None:
        """Make the device hold `state`'s values: nothing to do if it already does, else evict and upload."""
        owner = self._owner() if self._owner is not None else None
        if owner is state and getattr(state, "_device", None) is self._link and self._link.valid:
            return
        if owner is not None and self._link.valid and getattr(owner, "_device", None) is self._link:
            _ = owner.data  # reading syncs the previous owner down to its host buffer and unlinks it
        host = state._host_buffer()
        for block in self.blocks:
            begin, end = block.state_range
            block.load_state(host[begin:end])
        self._owner, self._link = None, None

    def release_to(self, state) -> None:
        """After a call: the device now holds the newest values of `state`; link them."""
        if self._link is not None:
            self._link.valid = False
        self._link = DeviceLink(self.blocks)
        self._owner = weakref.ref(state)
        state._attach_device(self._link)
