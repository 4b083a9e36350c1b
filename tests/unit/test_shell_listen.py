"""Where the registry and the relays listen (control/shell.py): `[::]` is one socket for
IPv4 and IPv6, and on a host whose kernel has no IPv6 it is every IPv4 address instead of
a failure to start."""

import errno
import socket

import pytest

from pilotif.control.shell import listen_address

PORT = 7946


def test_both_families_listen_on_one_socket_where_ipv6_exists() -> None:
    assert listen_address(("::", PORT)) == ("::", PORT)


def test_without_ipv6_in_the_kernel_it_listens_on_every_ipv4_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", no_ipv6)
    assert listen_address(("::", PORT)) == ("0.0.0.0", PORT)


@pytest.mark.parametrize("listen", [("0.0.0.0", PORT), ("198.18.0.1", PORT), ("3fff::1", PORT)])
def test_any_other_address_is_kept(listen: tuple[str, int]) -> None:
    assert listen_address(listen) == listen
