"""Hypothesis strategies and small builders shared by the protocol tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from seedswarm.protocol.records import MAX_FRAME_RECORDS, SEQ_LIMIT, Frame
from seedswarm.protocol.signing import NodeKey

RUN = bytes.fromhex("5eed5a4d00c0ffee")
OTHER_RUN = bytes.fromhex("5eed5a4d00c0ffef")

# Fixed keys (not generate()) so that failures replay identically.
KEY_A = NodeKey.from_hex("01" * 32)
KEY_B = NodeKey.from_hex("02" * 32)

node_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
run_ids = st.binary(min_size=8, max_size=8)
clocks = st.integers(min_value=0, max_value=2**63 - 1)

# Record bytes: anything but 0x80 (-128), which is not a valid record value.
qs_bytes = st.binary(min_size=1, max_size=MAX_FRAME_RECORDS).map(
    lambda b: b.replace(b"\x80", b"\x7f")
)


@st.composite
def frames(draw: st.DrawFn, *, run_id: bytes | None = None, node: str | None = None) -> Frame:
    """An unsigned, valid frame (any run unless ``run_id`` is given)."""
    qs = draw(qs_bytes)
    first = draw(
        st.one_of(
            st.integers(min_value=0, max_value=1000),
            st.integers(min_value=0, max_value=SEQ_LIMIT - len(qs)),
        )
    )
    return Frame(
        run_id=draw(run_ids) if run_id is None else run_id,
        node=draw(node_ids) if node is None else node,
        first_seq=first,
        clock=draw(clocks),
        qs=qs,
    )


# Anything msgpack can carry: the raw material of hostile input.
msgpack_leaves: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
msgpack_keys: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=12), st.binary(max_size=12), st.integers(-5, 5), st.none()
)
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    msgpack_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.dictionaries(msgpack_keys, inner, max_size=8),
    ),
    max_leaves=20,
)
