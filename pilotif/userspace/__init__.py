"""A node with no root and no TUN: the userspace TCP/IP stack (pilotif.netstack) as the
daemon's local stack, and what unmodified programs and Python code reach the overlay by.

- stack.py: UserspaceStack, the LocalStack over the netstack, with asyncio streams
  (open_connection, start_server) and ping for the process itself
- transport.py: one netstack connection as an asyncio transport
"""

from pilotif.userspace.stack import USERSPACE_CONFIG, StackServer, UserspaceStack

__all__ = ["USERSPACE_CONFIG", "StackServer", "UserspaceStack"]
