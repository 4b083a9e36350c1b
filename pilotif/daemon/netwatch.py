"""Watching this host's network for changes that move the node (a roam): addresses of
every interface but the overlay's own, and default routes, from rtnetlink (pyroute2).
Other messages (links, neighbours, the overlay's own routes) say nothing about where
the node is, and some come often.

pyroute2's calls block and run an event loop of their own, so the watch runs in a thread
of its own and hands the changes to the daemon's loop, which waits for them to settle
(they come in bursts: an address, then its routes) and calls `on_change` once a burst.
Where pyroute2 cannot be imported (a userspace node off Linux, or without it) there is no
watch: the event `network_watch_unavailable` says so once.
"""

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pilotif.util.logs import log_event

if TYPE_CHECKING:
    from pyroute2 import IPRoute

_ADDRESS_CHANGES: Final = frozenset({"RTM_NEWADDR", "RTM_DELADDR"})
_ROUTE_CHANGES: Final = frozenset({"RTM_NEWROUTE", "RTM_DELROUTE"})
_MAIN_TABLE: Final = 254
_SCOPE_LINK: Final = 253
SETTLE_S: Final = 0.3
"""How long after the first change of a burst the node acts."""


class NetworkWatch:
    """Calls `on_change(changes)` on `loop` once addresses of interfaces other than
    `overlay`, or default routes, changed: SETTLE_S after the first change of a burst."""

    def __init__(
        self,
        overlay: str,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[list[str]], None],
    ) -> None:
        self._overlay = overlay
        self._loop = loop
        self._on_change = on_change
        self._changes: list[str] = []
        self._settling: asyncio.TimerHandle | None = None
        self._ipr: IPRoute | None = None
        self._overlay_index: int | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="netwatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # pyroute2 runs its own event loop: it is made, and used, in this thread only.
        try:
            from pyroute2 import IPRoute
        except ImportError as error:
            log_event("network_watch_unavailable", level=logging.WARNING, error=str(error))
            return
        ipr = IPRoute()
        self._ipr = ipr
        ipr.bind()
        found = ipr.link_lookup(ifname=self._overlay)
        self._overlay_index = int(found[0]) if found else None
        while not self._stopping:
            try:
                messages = ipr.get()
            except (OSError, ValueError):
                return
            for message in messages:
                if self._relevant(message):
                    self._loop.call_soon_threadsafe(self._changed, _describe(message))

    def _changed(self, what: str) -> None:
        self._changes.append(what)
        if self._settling is None:
            self._settling = self._loop.call_later(SETTLE_S, self._settled)

    def _settled(self) -> None:
        self._settling = None
        changes, self._changes = self._changes, []
        self._on_change(changes)

    def _relevant(self, message: Any) -> bool:
        event = message.get("event")
        if event in _ADDRESS_CHANGES:
            # Link-local addresses (fe80::) come and go with links and say nothing.
            return bool(
                message.get("index") != self._overlay_index and message.get("scope") != _SCOPE_LINK
            )
        if event in _ROUTE_CHANGES:
            return bool(message.get("dst_len") == 0 and message.get("table") == _MAIN_TABLE)
        return False

    def close(self) -> None:
        """Stop watching: the thread ends at its next message (it is a daemon thread, so
        it never holds the process up)."""
        self._stopping = True
        if self._settling is not None:
            self._settling.cancel()


def _describe(message: Any) -> str:
    """What changed, for the log: the event and the address or gateway."""
    detail = message.get_attr("IFA_ADDRESS") or message.get_attr("RTA_GATEWAY") or ""
    return f"{message.get('event')} {detail}".strip()
