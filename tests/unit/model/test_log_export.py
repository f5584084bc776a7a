"""A log export is enough to rebuild a run (docs/PROTOCOL.md §11): a fresh replica that reads
nothing but the export, in whatever order its entries come, reaches the fingerprint of the
replica that wrote it."""

from __future__ import annotations

import random

import pytest

from seedswarm.model.engine import Engine
from seedswarm.protocol.codec import encode_frame
from seedswarm.protocol.logfile import LogWriter, read_log
from seedswarm.protocol.records import Frame, Record, q_to_byte

from .helpers import random_records, tiny_engine


def _frames(engine: Engine, records: list[Record], rng: random.Random) -> list[Frame]:
    """The records cut into frames of 1 to 5 consecutive records of one node."""
    out: list[Frame] = []
    by_node: dict[str, list[Record]] = {}
    for r in records:
        by_node.setdefault(r.node, []).append(r)
    for rs in by_node.values():
        i = 0
        while i < len(rs):
            n = rng.randint(1, 5)
            part = rs[i : i + n]
            qs = bytes(q_to_byte(r.q) for r in part)
            out.append(Frame(engine.run_id, part[0].node, part[0].seq, part[-1].clock, qs))
            i += n
    return out


@pytest.mark.parametrize("order", ["written", "shuffled"])
def test_a_replay_from_the_export_alone_gives_the_runs_fingerprint(order: str) -> None:
    rng = random.Random(7)
    source = tiny_engine()
    records = random_records(120, rng_seed=3)
    source.apply(records)
    frames = _frames(source, records, rng)
    if order == "shuffled":
        rng.shuffle(frames)
    writer = LogWriter(source.manifest)
    header = writer.header()
    # a third party's copy (provisional, in an open run) counts in the state as the author's
    entries = [
        writer.entry(f.node, encode_frame(f), provisional=rng.random() < 0.3) for f in frames
    ]
    parts = [header, *entries, writer.end()]
    data = b"".join(parts)

    imported = read_log(data[i : i + 997] for i in range(0, len(data), 997))
    assert imported.manifest == source.manifest
    assert imported.beyond_gaps == 0
    replica = Engine.open(imported.manifest, kernel="torch")
    assert replica.fingerprint() != source.fingerprint()  # the base, before the log
    replica.apply(list(imported.log.ordered()))
    assert replica.fingerprint() == source.fingerprint()
