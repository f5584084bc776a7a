"""seedswarm.daemon: the asyncio shell around the sans-IO session, laid out by role.

The runtime, what a node or a relay runs:

    peer/       the one driver of the session (driver.py) and the one lifecycle of a
                long-running command (lifecycle.py): every role below is built on them
    node/       a driver plus a trainer, a flusher, snapshots and the join
    relay/      a driver plus a bundler
    transport/  the broker connection: the seam, MQTT, an in-process bus, chosen by URL
    store/      the durable log (SQLite), the data directory, snapshots
    status/     the /status schema, one HTTP server for node and relay, the dashboard

The tools built on it, which the runtime never imports (tests/unit/test_imports.py):

    launch/     the local swarm, the embedded broker, Mosquitto for the benchmarks
    cli/        the ``seedswarm`` command line and the one-shot commands
    bench/      every benchmark, and the simulated nodes of the load benchmarks

Shared by all: settings.py and options.py (typed settings: flags, environment, TOML),
errors.py, console.py.
"""
