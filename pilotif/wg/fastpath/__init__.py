"""The WireGuard data path in batches: runs of packets sealed and batches of transport
messages opened in one native call (`_batch_loops.c`), with a plain Python fallback."""
