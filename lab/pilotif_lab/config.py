"""What one end of a lab tunnel is configured with, and its wg-quick text form.

The same `TunnelConfig` drives a pilotif daemon (as a wg-quick style file) and a
wireguard-go peer (as `wg set` arguments), so both sides of a test are set up alike.
"""

import os
from dataclasses import dataclass

from pilotif.wg.crypto import KEY_SIZE, generate_private_key, public_key
from pilotif.wg.keys import decode_key, encode_key


def new_private_key() -> str:
    """A fresh private key in `wg genkey` form."""
    return encode_key(generate_private_key())


def new_preshared_key() -> str:
    """A fresh preshared key in `wg genpsk` form."""
    return encode_key(os.urandom(KEY_SIZE))


def public_key_of(private_key: str) -> str:
    """The public key of a private key, both in base64 (as `wg pubkey`)."""
    return encode_key(public_key(decode_key(private_key)))


@dataclass(frozen=True)
class PeerConfig:
    """One [Peer] section."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    """"ip:port" or "[v6]:port"; None for a peer that must reach us first."""
    preshared_key: str | None = None
    persistent_keepalive_s: int | None = None


@dataclass(frozen=True)
class TunnelConfig:
    """The [Interface] section and its peers."""

    private_key: str
    listen_port: int
    addresses: tuple[str, ...]
    """Interface addresses with their prefix length, v4 and v6."""
    mtu: int
    peers: tuple[PeerConfig, ...]

    @property
    def public_key(self) -> str:
        """Our public key, as peers configure it."""
        return public_key_of(self.private_key)

    def to_wg_quick(self) -> str:
        """The wg-quick style text that `pilotif up --config` reads."""
        lines = [
            "[Interface]",
            f"PrivateKey = {self.private_key}",
            f"Address = {', '.join(self.addresses)}",
            f"ListenPort = {self.listen_port}",
            f"MTU = {self.mtu}",
        ]
        for peer in self.peers:
            lines += ["", "[Peer]", f"PublicKey = {peer.public_key}"]
            if peer.preshared_key is not None:
                lines.append(f"PresharedKey = {peer.preshared_key}")
            lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
            if peer.endpoint is not None:
                lines.append(f"Endpoint = {peer.endpoint}")
            if peer.persistent_keepalive_s is not None:
                lines.append(f"PersistentKeepalive = {peer.persistent_keepalive_s}")
        return "\n".join(lines) + "\n"
