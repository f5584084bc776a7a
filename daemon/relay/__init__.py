"""The relay: a session driver plus a bundler (relay.py says why relays exist)."""
