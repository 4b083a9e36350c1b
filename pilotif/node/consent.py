"""This node's consent to trust, sans-IO: whom it asked for trust or approved (by hand or
by its `--auto-approve` policy), and the outbox of its trust requests and answers that
the registry has not confirmed yet (kept in the trust record, sent again after each
registration). The registry never adds a peer this node did not consent to.

Inputs: `give`/`withdraw` (consent), `queue` (a trust request or answer for the
registry), `answered`/`unanswered` (what became of a queued one) and `send_outbox` (the
registry answers again). Outputs: requests on the registry link and
`TrustStateChanged`/`RequestError` events; the record is the caller's to save.

`TrustSync` fetches the registry's trust list page by page (the node core makes its
peers match the whole list).
"""

from dataclasses import dataclass, field
from typing import Any, Final

from pilotif.node.events import EventSink, RequestError, TrustStateChanged
from pilotif.node.registry_link import Errands, RegistryLink, refusal
from pilotif.node.trust import TrustRecord

TRUST_OPS: Final = frozenset({"trust_request", "trust_respond", "untrust"})
"""Requests that change trust: kept in the outbox until the registry confirms them."""
QUEUED: Final = "queued"
"""The state a trust request or answer has while the registry does not answer."""
ALL_POLICY: Final = "all"
NETWORK_POLICY: Final = "network"
TAG_POLICY_PREFIX: Final = "tag:"
_OutboxEntry = tuple[str, dict[str, Any]]


class Consent:
    """See the module docstring."""

    def __init__(self, record: TrustRecord, link: RegistryLink, sink: EventSink) -> None:
        self.record = record
        self._link = link
        self._sink = sink
        self._sent: dict[int, tuple[bytes, _OutboxEntry]] = {}
        """Request id -> the outbox entry it carries (peer key, (op, fields))."""

    def give(self, key: bytes) -> None:
        """This node asked `key` for trust or approved it."""
        if key not in self.record.consented:
            self.record.consented.add(key)
            self._sink.items.append(TrustStateChanged())

    def withdraw(self, key: bytes) -> None:
        """Untrusted, revoked or rejected: the pin and the consent go."""
        if key in self.record.consented or key in self.record.pins.values():
            self.record.forget(key)
            self._sink.items.append(TrustStateChanged())

    def queue(self, key: bytes, op: str, fields: dict[str, Any], now: float) -> int:
        """Keep a trust request or answer in the outbox (replacing any older one about
        that peer) until the registry confirms it, and send it; its request id."""
        entry = (op, fields)
        self.record.outbox[key] = entry
        self._sink.items.append(TrustStateChanged())
        return self._send(key, entry, now)

    def send_outbox(self, now: float) -> None:
        """Send what the outbox holds and is not on its way (after a registration: the
        registry answers again, or this node restarted with something queued)."""
        on_the_way = [entry for _, entry in self._sent.values()]
        for key, entry in list(self.record.outbox.items()):
            if not any(entry is sent for sent in on_the_way):
                self._send(key, entry, now)

    def answered(self, request_id: int, reply: dict[str, Any]) -> None:
        """The registry answered a request: a queued one leaves the outbox (a refusal
        too, which is logged; the CLI caller, if any, sees it as well)."""
        sent = self._sent.pop(request_id, None)
        if sent is None:
            return
        key, entry = sent
        if self.record.outbox.get(key) is entry:
            del self.record.outbox[key]
            self._sink.items.append(TrustStateChanged())
        if not reply.get("ok"):
            self._sink.items.append(RequestError(entry[0], refusal(reply)[1]))

    def unanswered(self, request_id: int) -> bool:
        """A request got no answer: whether it was a queued one (it stays in the outbox,
        sent again after the next registration)."""
        return self._sent.pop(request_id, None) is not None

    def _send(self, key: bytes, entry: _OutboxEntry, now: float) -> int:
        request_id = self._link.request(entry[0], entry[1], now)
        self._sent[request_id] = (key, entry)
        return request_id


def approves(policy: str | None, asker: dict[str, Any], network_name: str | None) -> bool:
    """Whether an `--auto-approve` policy approves this asker: everyone, members of our
    network, or nodes granted a tag (a tag a node gave itself never counts)."""
    if policy is None:
        return False
    if policy == ALL_POLICY:
        return True
    if policy == NETWORK_POLICY:
        return network_name is not None and asker.get("network_name") == network_name
    granted = asker.get("granted_tags")
    return isinstance(granted, list) and policy.removeprefix(TAG_POLICY_PREFIX) in granted


@dataclass
class TrustList:
    """The registry's trust list: the nodes we trust and those that asked us."""

    trusted: list[dict[str, Any]] = field(default_factory=list)
    incoming: list[dict[str, Any]] = field(default_factory=list)


class TrustSync:
    """The trust list being fetched from the registry page by page (one at a time)."""

    def __init__(self, errands: Errands) -> None:
        self._errands = errands
        self._pages: TrustList | None = None

    def start(self, now: float) -> None:
        """Fetch the trust list, unless a fetch is on its way."""
        if self._pages is None:
            self._pages = TrustList()
            self._errands.send("trust_list", {"offset": 0}, now)

    def page(self, reply: dict[str, Any], now: float) -> TrustList | None:
        """A page of the list; the whole list after its last page (else None)."""
        pages = self._pages
        if pages is None:
            return None
        pages.trusted += [n for n in reply.get("trusted", []) if isinstance(n, dict)]
        pages.incoming += [n for n in reply.get("incoming", []) if isinstance(n, dict)]
        next_offset = reply.get("next_offset")
        if type(next_offset) is int and next_offset > 0:
            self._errands.send("trust_list", {"offset": next_offset}, now)
            return None
        self._pages = None
        return pages

    def abandon(self) -> None:
        """The registry refused or was silent: the next sync starts over."""
        self._pages = None
