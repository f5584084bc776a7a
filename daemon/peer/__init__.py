"""What every peer runs: the driver of the sans-IO session (driver.py), the lifecycle of a
long-running command (lifecycle.py), and a peer's identity in a run (identity.py)."""
