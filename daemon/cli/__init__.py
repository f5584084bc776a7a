"""The ``seedswarm`` command line: ``main`` parses, and each command's handler runs it."""

from .main import main

__all__ = ["main"]
