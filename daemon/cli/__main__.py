"""``python -m seedswarm.daemon.cli``: the ``seedswarm`` command (how launchers and tests start
nodes and relays with the interpreter they run on)."""

import sys

from .main import main

sys.exit(main())
