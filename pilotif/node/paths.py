"""The path to one trusted peer: relay or direct, as one state table.

Theory of operation (h11's `_state.py` is the model). Each peer's path is in one state
of `PathState`; the node core feeds it `PathInput`s and `TRANSITIONS` says the new state
for each (state, input) pair. A pair that is not in the table leaves the state as it
is: that input means nothing there (a relayed packet while relayed, say). The path
manager does the side effect that goes with entering a state (moving the device's
endpoint, sending an echo, scheduling the next probe round) in one place,
`PathManager._enter` (`pilotif.node.path_manager`).

- RELAY: traffic goes through the registry's relay. Probe rounds are scheduled with
  backoff (`ROUND_BACKOFF_FIRST_S` doubling up to `ROUND_BACKOFF_MAX_S`): at each, the
  node asks the registry to `connect`, which sends both sides a `punch` at one moment.
- PROBING: a round is on: for `PROBE_DURATION_S` both sides send authenticated
  keepalives to each other's candidate endpoints every `PROBE_INTERVAL_S`. Traffic
  still goes through the relay. The first authenticated packet from a UDP address
  moves the path there (DIRECT), wherever it came from: the NAT may have given the
  other side another port than the registry saw.
- DIRECT: traffic goes to the peer's UDP endpoint, which follows WireGuard roaming; the
  rest of the round probes that endpoint only (not the peer's other candidates).
- SUSPECT: data we sent directly has gone unanswered for `PATH_CHECK_AFTER_S`; an ICMP
  echo through the tunnel asks the peer's kernel for an answer.
- HELD: the direct path went silent for `DIRECT_PATH_TIMEOUT_S`: back on the relay,
  and packets that still arrive directly do not move us until the next probe round
  (after FALLBACK_ROUND_S if the path had lived STABLE_DIRECT_S, else after
  HOLD_AFTER_FALLBACK_S).
"""

from enum import StrEnum
from typing import Final

from pilotif.wg.roaming import Roaming

PROBE_INTERVAL_S: Final = 0.2
PROBE_DURATION_S: Final = 5.0
ROUND_BACKOFF_FIRST_S: Final = 2.0
"""The wait before the second probe round of a relayed peer; it doubles after each."""
ROUND_BACKOFF_MAX_S: Final = 32.0
"""The longest wait between probe rounds: longer than Linux conntrack keeps an unanswered
UDP entry (30 s), so a round that failed because a router took the other side's first
packet for itself (and blocked that port towards it) is followed by one that finds the
router's table clean again."""
FALLBACK_ROUND_S: Final = 1.0
"""How soon the next probe round starts after a long-lived direct path died (most likely
a NAT or address change that a new round finds at once)."""
HOLD_AFTER_FALLBACK_S: Final = 30.0
"""How long a peer stays on the relay after a young direct path died: such a path often
works one way only (we hear the peer directly but it does not hear us), and a round
would take it back only to lose it again."""
STABLE_DIRECT_S: Final = 60.0
"""A direct path that lived this long resets the backoff when it dies."""
PATH_CHECK_AFTER_S: Final = 1.0
"""Unanswered data this old on a direct path makes us ask the peer for an echo."""
DIRECT_PATH_TIMEOUT_S: Final = 5.0
"""A direct path that answered nothing for this long falls back to the relay."""
QUIET_PEER_KEEPALIVE_S: Final = 1.0
"""A peer whose data stopped arriving this long ago gets one keepalive from us, on
either path: when our router got a new public address and nothing changed on this host,
that packet is how the peer (or the relay, which then asks us to register again) learns
where we are."""
QUIET_RELAY_KEEPALIVE_MIN_S: Final = 10.0
"""The quiet-peer keepalive through the relay goes at most this often per peer (it is
relay load; the direct one costs the relay nothing)."""


class PathState(StrEnum):
    """Where a peer's traffic goes; see the module docstring."""

    RELAY = "relay"
    PROBING = "probing"
    DIRECT = "direct"
    SUSPECT = "suspect"
    HELD = "held"


class PathInput(StrEnum):
    """What can happen to a path."""

    PUNCH = "punch"
    """The registry started a probe round (a `punch` with the peer's candidates)."""
    ROUND_OVER = "round_over"
    """PROBE_DURATION_S passed since the punch."""
    DIRECT_PACKET = "direct_packet"
    """An authenticated packet of the peer arrived from a UDP address."""
    RELAYED_PACKET = "relayed_packet"
    """An authenticated packet of the peer came through the relay and took the endpoint
    (as `ROAMING` lets it: a handshake initiation, the peer restarted or lost its direct
    path and answers only there; or anything once the direct path has been silent for
    DIRECT_PATH_TIMEOUT_S, the other side fell back)."""
    NETWORK_CHANGED = "network_changed"
    """This host's addresses or routes changed: our NAT mappings (and so the peer's view
    of our endpoint) may be gone. Back to the relay at once; the probe round the node
    asks for brings the path back to direct where it can."""
    CACHED_ENDPOINT = "cached_endpoint"
    """The node started without its registry and knows the peer's last direct endpoint:
    it goes there at once (and falls back like any direct path that does not answer)."""
    UNANSWERED = "unanswered"
    """Data sent on the direct path is unanswered for PATH_CHECK_AFTER_S."""
    ANSWERED = "answered"
    """The direct path answered again."""
    SILENT = "silent"
    """The direct path answered nothing for DIRECT_PATH_TIMEOUT_S."""


TRANSITIONS: Final[dict[tuple[PathState, PathInput], PathState]] = {
    (PathState.RELAY, PathInput.PUNCH): PathState.PROBING,
    (PathState.RELAY, PathInput.DIRECT_PACKET): PathState.DIRECT,
    (PathState.RELAY, PathInput.CACHED_ENDPOINT): PathState.DIRECT,
    (PathState.HELD, PathInput.PUNCH): PathState.PROBING,
    (PathState.PROBING, PathInput.PUNCH): PathState.PROBING,
    (PathState.PROBING, PathInput.ROUND_OVER): PathState.RELAY,
    (PathState.PROBING, PathInput.DIRECT_PACKET): PathState.DIRECT,
    (PathState.DIRECT, PathInput.DIRECT_PACKET): PathState.DIRECT,
    (PathState.DIRECT, PathInput.UNANSWERED): PathState.SUSPECT,
    (PathState.DIRECT, PathInput.SILENT): PathState.HELD,
    (PathState.DIRECT, PathInput.RELAYED_PACKET): PathState.RELAY,
    (PathState.DIRECT, PathInput.NETWORK_CHANGED): PathState.HELD,
    (PathState.SUSPECT, PathInput.DIRECT_PACKET): PathState.SUSPECT,
    (PathState.SUSPECT, PathInput.ANSWERED): PathState.DIRECT,
    (PathState.SUSPECT, PathInput.SILENT): PathState.HELD,
    (PathState.SUSPECT, PathInput.RELAYED_PACKET): PathState.RELAY,
    (PathState.SUSPECT, PathInput.NETWORK_CHANGED): PathState.HELD,
}
"""(state, input) -> the next state; pairs not listed leave the state unchanged."""

DIRECT_STATES: Final = frozenset({PathState.DIRECT, PathState.SUSPECT})
"""States whose traffic goes to a UDP endpoint."""

ROAMING: Final[dict[PathState, Roaming]] = {
    PathState.RELAY: Roaming(to_udp=True, to_relay_after_s=None),
    PathState.PROBING: Roaming(to_udp=True, to_relay_after_s=None),
    PathState.DIRECT: Roaming(to_udp=True, to_relay_after_s=DIRECT_PATH_TIMEOUT_S),
    PathState.SUSPECT: Roaming(to_udp=True, to_relay_after_s=DIRECT_PATH_TIMEOUT_S),
    PathState.HELD: Roaming(to_udp=False, to_relay_after_s=None),
}
"""What may move a peer's endpoint in each state, as the device applies it: a UDP address
where the table takes DIRECT_PACKET (or the path is direct already and follows WireGuard
roaming), the peer's relay where it takes RELAYED_PACKET. The device reports each move
(EndpointChanged) and the node feeds it to the table."""


def next_state(state: PathState, event: PathInput) -> PathState:
    """The state after `event`; the same state when the table has no entry for the pair."""
    return TRANSITIONS.get((state, event), state)
