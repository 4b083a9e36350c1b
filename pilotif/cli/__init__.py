"""`pilotif ...`: the command line (main.py and one module per group of commands) and
`pilotif mcp`, the same operations as Model Context Protocol tools for LLM agents.
A command imports what only it uses when it runs (lazy.py: the groups of other modules
load when called), so that `pilotif status` in an agent's loop costs little."""
