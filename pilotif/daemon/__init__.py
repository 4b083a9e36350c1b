"""The daemon: the thin asyncio shell around the cores. It starts one interface (daemon.py),
pumps packets between the local stack and the Bind (datapath.py), runs the node core
(node_runner.py), serves the overlay address (overlay_servers.py) and answers the CLI on
the local control socket (api.py)."""
