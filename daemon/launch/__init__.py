"""Starting brokers and swarms: ``seedswarm swarm`` (swarm.py), the embedded broker (broker.py)
and a Mosquitto of the benchmarks' own (mosquitto.py)."""
