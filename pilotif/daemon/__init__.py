"""The daemon: the thin asyncio shell around the cores. It starts and stops one interface
(daemon.py) from its parts (parts.py), pumps packets between the local stack and the Bind
(datapath.py), runs the node core (node_runner.py), serves the overlay address
(overlay_servers.py), answers the CLI on the local control socket (api.py: the socket;
requests.py: one handler per request; status.py: what status and metrics show) and routes
the cores' events (event_router.py; event_catalogue.py: each event's log line and `pilotif
events` kind; event_publisher.py: logs and publishes them)."""
