"""A node whose control datagrams move between UDP and a stream (net/fallback.py) registers
at once from there, and its peers' direct paths stay: its UDP towards them did not move
(a registry restart made nodes fall back and, counted as a move, drop their direct
paths for a relay that was down)."""

from pilotif.node.events import PathChanged
from tests.unit.netsim import Network
from tests.unit.test_node_core import _both_direct, _trusting, net  # noqa: F401


def test_a_change_of_carrier_registers_at_once_and_keeps_direct_paths(net: Network) -> None:  # noqa: F811
    alpha, beta = net.node("alpha"), net.node("beta")
    _trusting(net, alpha, beta)
    net.run_until(lambda: _both_direct(alpha, beta), 10.0)
    net.run(3.0)
    registered = net.registry.requests["register"]
    changes = len([e for e in alpha.events if isinstance(e, PathChanged)])
    alpha.core.carrier_changed(net.now)
    alpha.flush()
    net.run(0.5)
    assert net.registry.requests["register"] == registered + 1
    assert _both_direct(alpha, beta)
    assert len([e for e in alpha.events if isinstance(e, PathChanged)]) == changes
