"""``seedswarm bench``: every benchmark (run.py lists them), with typed settings (settings.py)
and typed results. Nothing here is imported by the runtime."""
