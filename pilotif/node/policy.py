"""The node's port policy: which of its ports each trusted peer may open.

A policy is a default (`allow`, today's behaviour, or `deny`) and rules, read from lines:

    # comments and blank lines are fine
    default deny
    allow orchestrator 8080/tcp        # a peer by hostname
    allow tag:workers 9000-9100/udp    # peers the registry's operator granted a tag
    allow network icmp                 # members of this node's network: ping
    deny * 22/tcp                      # every peer

A port (or range, or `*` for all) is refused if a `deny` rule names it for that peer,
else passes if an `allow` rule does, else the default decides. Order does not matter.
Only tags the operator granted count (a tag a node gives itself means nothing here).
`icmp` rules decide echo requests; replies, errors about packets this node sent to that
peer and traffic that this node started pass whatever the policy; other ICMP types are
refused, and so is what cannot be judged (an IPv6 header chain that cannot be read, a
fragment whose first fragment did not pass). See `pilotif.packet.filter`, what
the device runs; an open policy (`Policy()`) runs no filter at all.

`parse_policy` refuses a whole text at its first bad line (file and line number); the
running policy is then left as it was.
"""

from dataclasses import dataclass
from typing import Final, Literal

from pilotif.control.identity import HostnameError, normalize_hostname
from pilotif.packet.filter import PacketFilter, PortDecisions

Action = Literal["allow", "deny"]
Proto = Literal["tcp", "udp", "icmp"]

ANY_PEER: Final = "*"
NETWORK_TARGET: Final = "network"
TAG_PREFIX: Final = "tag:"
ALL_PORTS: Final = (0, 65535)
_ACTIONS: Final = ("allow", "deny")
_PORT_PROTOS: Final = ("tcp", "udp")


class PolicyError(ValueError):
    """A policy line (or CLI rule) that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Rule:
    """`allow|deny TARGET PORTS/PROTO` (or `... icmp`)."""

    action: Action
    target: str
    """`*`, `network`, `tag:NAME` or a hostname."""
    proto: Proto
    low: int = ALL_PORTS[0]
    high: int = ALL_PORTS[1]

    def text(self) -> str:
        """The rule as a policy line."""
        if self.proto == "icmp":
            spec = "icmp"
        elif (self.low, self.high) == ALL_PORTS:
            spec = f"*/{self.proto}"
        elif self.low == self.high:
            spec = f"{self.low}/{self.proto}"
        else:
            spec = f"{self.low}-{self.high}/{self.proto}"
        return f"{self.action} {self.target} {spec}"


@dataclass(frozen=True)
class Policy:
    """A default and rules; `Policy()` lets everything in (no filter at all)."""

    default: Action = "allow"
    rules: tuple[Rule, ...] = ()

    @property
    def is_open(self) -> bool:
        """Whether nothing is ever refused (then the device filters nothing)."""
        return self.default == "allow" and not any(r.action == "deny" for r in self.rules)

    def text(self) -> str:
        """The policy as lines `parse_policy` reads back."""
        return "\n".join([f"default {self.default}", *(r.text() for r in self.rules)]) + "\n"

    def with_rule(self, rule: Rule) -> "Policy":
        """This policy and one more rule (once)."""
        return self if rule in self.rules else Policy(self.default, (*self.rules, rule))

    def joined(self, later: "Policy", later_sets_default: bool) -> "Policy":
        """This policy's rules and then `later`'s; its default if it set one."""
        rules = self.rules + tuple(r for r in later.rules if r not in self.rules)
        return Policy(later.default if later_sets_default else self.default, rules)


@dataclass(frozen=True)
class PeerIdentity:
    """What rules match a peer on: its name, the tags the operator granted it, and
    whether it is a member of this node's network."""

    hostname: str
    granted_tags: tuple[str, ...]
    same_network: bool

    def matches(self, target: str) -> bool:
        if target == ANY_PEER:
            return True
        if target == NETWORK_TARGET:
            return self.same_network
        if target.startswith(TAG_PREFIX):
            return target.removeprefix(TAG_PREFIX) in self.granted_tags
        return target == self.hostname


def parse_policy(text: str, source: str) -> tuple[Policy, bool]:
    """The policy in `text` and whether it has a `default` line; PolicyError naming
    `source` and the line for the first line that is not right."""
    default: Action = "allow"
    has_default = False
    rules: list[Rule] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            if words[0] == "default":
                default = _action(words[1:])
                has_default = True
            elif len(words) == 3:
                rule = parse_rule(words[0], words[1], words[2])
                if rule not in rules:
                    rules.append(rule)
            else:
                raise PolicyError(
                    "expected `default allow|deny` or `allow|deny TARGET PORTS/PROTO`"
                )
        except PolicyError as error:
            raise PolicyError(f"{source}:{number}: {error}") from None
    return Policy(default, tuple(rules)), has_default


def _action(words: list[str]) -> Action:
    if len(words) != 1 or words[0] not in _ACTIONS:
        raise PolicyError("`default` takes `allow` or `deny`")
    return "allow" if words[0] == "allow" else "deny"


def parse_rule(action: str, target: str, spec: str) -> Rule:
    """One rule from its three words; PolicyError saying what is wrong."""
    if action not in _ACTIONS:
        raise PolicyError(f"{action!r} is not allow or deny")
    checked_action: Action = "allow" if action == "allow" else "deny"
    checked_target = parse_target(target)
    if spec.lower() == "icmp":
        return Rule(checked_action, checked_target, "icmp")
    ports, _, proto = spec.lower().partition("/")
    if proto not in _PORT_PROTOS:
        raise PolicyError(f"{spec!r}: give PORTS/tcp, PORTS/udp or icmp (e.g. 8080/tcp)")
    low, high = _ports(ports, spec)
    return Rule(checked_action, checked_target, "tcp" if proto == "tcp" else "udp", low, high)


def parse_target(target: str) -> str:
    """`*`, `network`, `tag:NAME` or a hostname, normalized; PolicyError if none."""
    if target in (ANY_PEER, NETWORK_TARGET):
        return target
    name = target.removeprefix(TAG_PREFIX)
    try:
        label = normalize_hostname(name.removesuffix(".pilot"))
    except HostnameError:
        raise PolicyError(
            f"{target!r} is not a peer: give a hostname, tag:NAME, network or *"
        ) from None
    return TAG_PREFIX + label if target.startswith(TAG_PREFIX) else label


def _ports(ports: str, spec: str) -> tuple[int, int]:
    if ports == "*":
        return ALL_PORTS
    low_text, _, high_text = ports.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if high_text else low
    except ValueError:
        raise PolicyError(f"{spec!r}: ports are a number, LOW-HIGH or *") from None
    if not 1 <= low <= high <= ALL_PORTS[1]:
        raise PolicyError(f"{spec!r}: ports go from 1 to 65535, low to high")
    return low, high


def packet_filter(policy: Policy, peer: PeerIdentity) -> PacketFilter | None:
    """What the device applies to the peer's packets (None when everything passes)."""
    if policy.is_open:
        return None
    matching = [rule for rule in policy.rules if peer.matches(rule.target)]
    default = policy.default == "allow"

    def decisions(proto: Proto) -> PortDecisions:
        allow = [(r.low, r.high) for r in matching if r.proto == proto and r.action == "allow"]
        deny = [(r.low, r.high) for r in matching if r.proto == proto and r.action == "deny"]
        return PortDecisions.build(allow, deny, default)

    icmp = [rule.action for rule in matching if rule.proto == "icmp"]
    icmp_echo = "deny" not in icmp and ("allow" in icmp or default)
    return PacketFilter(decisions("tcp"), decisions("udp"), icmp_echo, default)
