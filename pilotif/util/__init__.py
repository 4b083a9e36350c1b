"""Small pieces every layer uses: structured logs, state paths and files, identities and
hostnames, durations, a bounded LRU mapping."""
