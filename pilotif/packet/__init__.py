"""IP packets as the overlay sees them: header layouts (ip.py) and the port-policy filter
that judges every packet a peer sends (filter.py)."""
