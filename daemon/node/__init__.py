"""The node: a session driver plus what training adds (node.py has the map of its parts)."""
