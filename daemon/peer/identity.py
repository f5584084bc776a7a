"""A peer's identity in a run: the run's manifest, and this peer's signing key.

Nodes build their manifest from the run settings (node/startup.py) or read it from a file; a
relay, which has no model, always reads it: from a manifest file or any node's data directory.
In a signed run the manifest lists the public key of every peer that may speak, and a peer's
private key must match its entry.
"""

from __future__ import annotations

from pathlib import Path

from seedswarm.daemon.errors import ConfigError
from seedswarm.daemon.store.datadir import DataDir, read_manifest_file
from seedswarm.protocol.manifest import Manifest
from seedswarm.protocol.signing import NodeKey


def read_manifest(given: str) -> Manifest:
    """``--manifest``: a manifest file, or a data directory that holds one."""
    source = Path(given).expanduser()
    path = DataDir(source).manifest_path if source.is_dir() else source
    if not path.is_file():
        raise ConfigError(
            f"--manifest {given!r}: give the run's manifest.json (any node's data directory has it)"
        )
    return read_manifest_file(path)


def load_key(manifest: Manifest, node: str, key_file: str) -> NodeKey | None:
    """This node's signing key in a signed run (None in an open run), checked against the
    public key the manifest lists for it."""
    keys = dict(manifest.keys)
    if not keys:
        return None
    if node not in keys:
        raise ConfigError(f"node {node} is not one of the run's writers ({', '.join(keys)})")
    if not key_file:
        raise ConfigError("this run is signed: give this node's private key with --key-file")
    try:
        text = Path(key_file).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--key-file {key_file}: {exc.strerror}") from exc
    key = NodeKey.from_hex(text)
    if key.public_hex() != keys[node]:
        raise ConfigError(f"--key-file {key_file} is not the key the run lists for {node}")
    return key
