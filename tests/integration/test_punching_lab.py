"""Issue 24 item 4 in the namespace lab: double NAT (a carrier-grade NAT in front of a
home router, both port-preserving) goes direct, and carries a TCP transfer intact."""

import os
import time
from pathlib import Path

import pytest
from pilotif_lab.checks import ping, tcp_transfer
from pilotif_lab.nat import PATH_TIMEOUT_S, NatKind, nat_lab, trust

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

TRANSFER_BYTES = 20 * 1024 * 1024


@pytest.mark.parametrize("carriers", [(0,), (0, 1)], ids=["one-side", "both-sides"])
def test_double_nat_goes_direct_within_five_seconds_of_trust(
    tmp_path: Path, carriers: tuple[int, ...]
) -> None:
    with nat_lab(
        (NatKind.CONE, NatKind.CONE),
        (("alpha", 0), ("beta", 1)),
        tmp_path,
        carriers=carriers,
    ) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        trust(alpha, beta)
        trusted_at = time.monotonic()
        alpha.wait_for_path("beta", ("direct",), PATH_TIMEOUT_S)
        beta.wait_for_path("alpha", ("direct",), PATH_TIMEOUT_S)
        print(f"direct {time.monotonic() - trusted_at:.1f} s after trust")
        # The registry sees alpha at the carrier's address, which the home router is not.
        seen = alpha.status()["node"]["public_endpoint"]
        assert seen.rpartition(":")[0] == lab.routers[0].wan_address
        assert lab.routers[0].carrier is not None
        beta_ip = beta.status()["node"]["ipv4"]
        assert ping(alpha.namespace, beta_ip).all_answered
        result = tcp_transfer(alpha.namespace, beta.namespace, beta_ip, TRANSFER_BYTES)
        assert result.intact, result
        assert alpha.peer("beta")["path"] == "direct"
