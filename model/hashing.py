"""The hashes that name weights: the base model's hash (the manifest's ``base_hash``) and the
fingerprint of a replica's state, both SHA-256 over names, shapes and values
(docs/PROTOCOL.md §8)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

import torch

STATE_DOMAIN = b"seedswarm/state/v1"
BASE_DOMAIN = b"seedswarm/base/v1"


def hash_tensors(
    domain: bytes,
    named: Iterable[tuple[str, torch.Tensor]],
    prefix: bytes = b"",
    dtype: torch.dtype = torch.float32,
) -> str:
    """SHA-256 over names, shapes and little-endian values (fp32, or the state's int64), in
    the order given (docs/PROTOCOL.md §8)."""
    h = hashlib.sha256(domain + prefix)
    for name, t in named:
        raw = name.encode()
        h.update(struct.pack("<H", len(raw)) + raw)
        h.update(struct.pack(f"<B{t.dim()}Q", t.dim(), *t.shape))
        h.update(t.detach().to("cpu", dtype).contiguous().numpy().data)  # no copy
    return h.hexdigest()
