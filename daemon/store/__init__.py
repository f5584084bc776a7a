"""What a peer keeps on disk: the durable log (log_store.py), the data directory's layout
(datadir.py) and snapshots of the weights (snapshots.py)."""
