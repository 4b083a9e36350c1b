"""Two pilotif nodes inside one Python program (pilotif.Node: no daemon, no root, no TUN).

alpha serves port 1000 (it answers each line with "got " and the line) and UDP port 1000
(it answers each datagram with "heard " and the datagram); beta asks alpha for trust,
alpha approves, beta sends the seed's line and prints the answer, then one datagram and
prints the answer.

    pilotif registry --listen 127.0.0.1:7946 --state-dir /tmp/registry &
    python3 docs/examples/embedded_node.py 127.0.0.1:7946 /tmp/embedded
"""

import asyncio
import contextlib
import sys
from pathlib import Path

import pilotif


async def answer_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(b"got " + line)
        await writer.drain()
    writer.close()


async def answer_datagrams(udp: pilotif.UdpEndpoint) -> None:
    while True:
        data, sender = await udp.recv()
        udp.send(b"heard " + data, sender)


async def main(registry: str, state: Path) -> None:
    async with (
        pilotif.Node(registry=registry, hostname="alpha", state_dir=state / "alpha") as alpha,
        pilotif.Node(registry=registry, hostname="beta", state_dir=state / "beta") as beta,
    ):
        await alpha.start_server(answer_lines, port=1000)
        answering = asyncio.ensure_future(answer_datagrams(alpha.open_udp(1000)))
        await beta.handshake("alpha", "beta wants to stream")
        while not (await alpha.pending()).get("incoming"):
            await asyncio.sleep(0.1)  # the request travels through the registry
        await alpha.approve("beta")
        while not await beta.peers():
            await asyncio.sleep(0.1)  # the approval travels back
        reader, writer = await beta.open_connection("alpha", 1000)
        writer.write(b'{"action":"start_stream", "parameters":"real_time"}\n')
        writer.write_eof()
        print((await reader.read()).decode(), end="")
        writer.close()
        udp = beta.open_udp()
        answer = None
        while answer is None:  # UDP is lossy: ask again until answered
            udp.send(b"a datagram", ("alpha", 1000))
            with contextlib.suppress(TimeoutError):
                answer, _ = await asyncio.wait_for(udp.recv(), timeout=1)
        print(answer.decode())
        answering.cancel()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1], Path(sys.argv[2])), timeout=60))
