"""What a peer shows of itself: the typed /status (schema.py), the one HTTP server of node and
relay (server.py), a node's own endpoints (node_routes.py) and its dashboard (dashboard/)."""
