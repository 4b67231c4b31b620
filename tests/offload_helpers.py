"""Shared by the offload tests."""
import numpy as np


def linked_state(model):
    """A fresh state: rwkvx.State implements the device-link protocol the runner uses."""
    return model.new_state()


PROMPT = np.frombuffer(b'"in the beginning', dtype=np.uint8).astype(np.int32)  # 17 tokens (byte vocab)
