"""Small pieces every layer uses: structured logs, state paths, state files (atomic, 0600,
never through a link), durations, a bounded LRU mapping."""
