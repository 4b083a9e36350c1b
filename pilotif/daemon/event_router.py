"""Where the events of both cores go: each is published (its log line, `pilotif events`,
the webhook) and may change another part: the replica the Bind relays through, the relays
it relays through and hears from, the `.pilot` names."""

from collections.abc import Callable

from pilotif.daemon.event_publisher import EventPublisher
from pilotif.daemon.parts import Parts
from pilotif.node.events import NodeEvent, RegistrySwitched, RelaysChanged
from pilotif.wg.events import Event


class EventRouter:
    """Called with every event of the device and the node (`route`)."""

    def __init__(
        self, parts: Parts, publisher: EventPublisher, names_changed: Callable[[], None]
    ) -> None:
        self._parts = parts
        self._publisher = publisher
        self._names_changed = names_changed

    def route(self, event: Event | NodeEvent) -> None:
        """Publish `event`, then make the parts it concerns follow."""
        self._publisher.publish(event)
        node, bind = self._parts.node, self._parts.bind
        if node is None:
            return
        assert bind is not None
        if isinstance(event, RegistrySwitched):
            bind.use_registry(node.registry_endpoint())
        elif isinstance(event, RelaysChanged):
            bind.use_relays(*node.relay_endpoints())
        self._names_changed()
