"""How registering a node costs as the registry's store grows (issue 13, first step).

    python3 bench/registry_store.py [--nodes 30000]

Registers NODES nodes (fresh keys, distinct names) in a fresh SQLite store in a temporary
directory, the way the registry core does (`Store.register` then `Store.mark_seen`), and
prints the median time of one registration over the first and the last tenth, and their
ratio: a store whose work grows with its size shows a ratio well above 1. No root, no
sockets: it measures the store alone (bench/registry_load.py, over UDP, is issue 13's
next step).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from ipaddress import IPv4Network
from pathlib import Path

from pilotif.registry.store import Store

DEFAULT_NODES = 30_000
NETWORK = IPv4Network("100.64.0.0/10")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    args = parser.parse_args()
    timings: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pilotif-store-") as tmp:
        store = Store(Path(tmp) / "registry.db", NETWORK)
        now = time.time()
        for number in range(args.nodes):
            key = os.urandom(32)
            started = time.perf_counter()
            store.register(key, f"node-{number}", ("bench",), now)
            store.mark_seen(key, endpoint="198.18.0.1:51820", lan_endpoints=(), session=1, now=now)
            timings.append(time.perf_counter() - started)
        store.close()
    tenth = max(1, args.nodes // 10)
    first = statistics.median(timings[:tenth]) * 1000
    last = statistics.median(timings[-tenth:]) * 1000
    print(
        f"{args.nodes} nodes: one registration {first:.3f} ms (first tenth), "
        f"{last:.3f} ms (last tenth), ratio {last / first:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
