"""seedswarm.protocol: the sans-IO core.

Records and frames, the msgpack codec with its validation and signatures, seeds, the Philox
reference generator, the byte quantiser, the run manifest, version vectors, the ordered log and
the sync planner. Nothing here touches sockets, files, clocks, asyncio or torch: bytes and
records go in, decisions come out.
"""

from .codec import decode_frame, encode_frame, sign_frame
from .errors import (
    ConflictError,
    DecodeError,
    ManifestError,
    ProtocolError,
    SeedswarmError,
    SignatureError,
    WrongRunError,
)
from .log import OrderedLog
from .manifest import Manifest, TaskSpec
from .messages import Presence, Want
from .quantize import quantize_gradient
from .records import Frame, Record
from .seeds import derive_seed
from .signing import NodeKey

__all__ = [
    "ConflictError",
    "DecodeError",
    "Frame",
    "Manifest",
    "ManifestError",
    "NodeKey",
    "OrderedLog",
    "Presence",
    "ProtocolError",
    "Record",
    "SeedswarmError",
    "SignatureError",
    "TaskSpec",
    "Want",
    "WrongRunError",
    "decode_frame",
    "derive_seed",
    "encode_frame",
    "quantize_gradient",
    "sign_frame",
]
