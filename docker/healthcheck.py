"""Container healthcheck: exit 0 when the node's /readyz answers 200 (started, connected to the
broker, joined the run). Reads the status address from SEEDSWARM_HTTP, as the node does."""

import os
import sys
import urllib.request

listen = os.environ.get("SEEDSWARM_HTTP", "127.0.0.1:8470")
host, _, port = listen.rpartition(":")
host = host.strip("[]")
if host in ("", "0.0.0.0", "::", "*"):
    host = "127.0.0.1"
elif ":" in host:
    host = f"[{host}]"
try:
    with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=4) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except Exception as exc:
    print(f"not ready: {exc}")
    sys.exit(1)
