"""What the daemon uses to reach a peer's services: one request, one answer, bounded in
time. A refusal, a closed port or silence becomes a ServiceError with a code for the CLI."""

import asyncio
from typing import Any, Final

from pilotif.services.overlay_net import KERNEL, OverlayNet
from pilotif.services.wire import MAX_LINE_BYTES, WireError, encode, read_message
from pilotif.util.errors import CodedError

REQUEST_TIMEOUT_S: Final = 10.0


class ServiceError(CodedError):
    """A peer's service did not do what was asked; `code` and `hint` say more."""


async def request(
    address: str, port: int, message: dict[str, Any], net: OverlayNet = KERNEL
) -> dict[str, Any]:
    """Send one request to address:port (over `net`) and return its answer (`ok` true)."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            reader, writer = await net.open_connection(address, port, limit=MAX_LINE_BYTES)
            try:
                writer.write(encode(message))
                await writer.drain()
                answer = await read_message(reader)
            finally:
                writer.close()
    except TimeoutError:
        raise ServiceError(
            "peer_unreachable",
            f"no answer from {address}:{port} within {REQUEST_TIMEOUT_S:g} s",
            "check `pilotif peers` (path) and the peer's policy for that port",
        ) from None
    except ConnectionRefusedError:
        raise ServiceError(
            "service_closed",
            f"nothing listens on {address}:{port}",
            "the peer runs an older pilotif, or its port policy refuses that port",
        ) from None
    except (OSError, WireError) as error:
        raise ServiceError("service_failed", f"{address}:{port}: {error}") from None
    if answer is None:
        raise ServiceError("service_failed", f"{address}:{port} closed without an answer")
    if not answer.get("ok"):
        raise ServiceError(str(answer.get("code", "refused")), str(answer.get("error", "")))
    return answer
