"""Python's cyclic garbage collector in a long-lived server holding much state (the
registry: a record and a control channel per node, millions of objects at 100,000
nodes). Left to itself, the collector looks at every one of them each time the heap has
grown by a quarter: 150-335 ms with the loop held, nine times while 100,000 nodes
registered, which was the registry's heartbeat p99. Here the young generations are
collected as Python does (cheap: they hold only what was made lately), the oldest only
when the server's housekeeping says, every FULL_COLLECTION_EVERY_S."""

import gc
from typing import Final

FULL_COLLECTION_EVERY_S: Final = 600.0
"""How often the oldest generation is collected: one pause (a few hundred ms at 100,000
nodes) every ten minutes instead of one per quarter of growth, and cyclic garbage that
lived long enough to reach it is freed within ten minutes."""
_NEVER: Final = 2**31 - 1
"""A threshold for the oldest generation that the young ones never reach."""


def collect_oldest_on_schedule() -> None:
    """From now on the oldest generation is collected only by `collect_all`."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)


def collect_all() -> None:
    """Collect every generation now (the housekeeping's job)."""
    gc.collect()
