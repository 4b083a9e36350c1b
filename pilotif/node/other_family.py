"""A dual-stack node's public endpoint of the other IP family, sans-IO.

The node registers over one family (the registry address it talks to). When the registry
also has an address of the other family (its name resolves to both, or `--registry`
lists both), every answered registration is followed by a `family_endpoint` request to
that address: the registry keeps where it came from as our public endpoint of that
family and gives it to our peers among our candidates (a peer behind a symmetric IPv4
NAT may reach us only over IPv6). Its reply says what the registry saw.

A registry that does not know the op (older than this) refuses it once with
`unknown_op`: nothing more is sent to it this run. Silence or any other refusal only
forgets the endpoint until the next answer.
"""

from typing import Any, Final

from pilotif.net.transport import transport_of
from pilotif.node.registry_link import Errands, RegistryLink
from pilotif.wg.events import Endpoint

FAMILY_ENDPOINT_OP: Final = "family_endpoint"
_UNKNOWN_OP: Final = "unknown_op"


class OtherFamily:
    """See the module docstring."""

    def __init__(self, link: RegistryLink, errands: Errands) -> None:
        self._link, self._errands = link, errands
        self.endpoint: str | None = None
        """Our public endpoint of the other family, as the registry saw it."""
        self.unsupported = False
        """The registry refused the op: it is older than dual-stack registration."""

    def registry_address(self) -> Endpoint | None:
        """The registry's first address of the family we do not register over."""
        family = transport_of(self._link.endpoint)
        return next((e for e in self._link.endpoints if transport_of(e) != family), None)

    def registered(self, now: float) -> None:
        """A registration was answered: tell the registry where we are over the other
        family too (unless such a request waits, or the registry does not know it)."""
        address = self.registry_address()
        if address is None or self.unsupported:
            self.endpoint = None
            return
        if not self._errands.waiting(FAMILY_ENDPOINT_OP):
            self._errands.send(FAMILY_ENDPOINT_OP, {}, now, to=address)

    def answered(self, reply: dict[str, Any]) -> None:
        """The registry's reply: what it saw, kept if it keeps it."""
        seen = reply.get("public_endpoint")
        self.endpoint = seen if isinstance(seen, str) and reply.get("kept") is True else None

    def refused(self, reply: dict[str, Any]) -> None:
        """A refusal (an older registry's `unknown_op`: never ask it again)."""
        self.endpoint = None
        if reply.get("code") == _UNKNOWN_OP:
            self.unsupported = True

    def silent(self) -> None:
        """No answer over the other family: it may not work from here now."""
        self.endpoint = None
