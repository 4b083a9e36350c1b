"""The fast data path: WireGuard transport messages sealed and opened in batches."""

from pilotif.fastpath.transport import open_into, padded_length, seal_batch

__all__ = ["open_into", "padded_length", "seal_batch"]
