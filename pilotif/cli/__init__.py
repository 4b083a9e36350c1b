"""`pilotif ...`: the command line (main.py and one module per group of commands) and
`pilotif mcp`, the same operations as Model Context Protocol tools for LLM agents."""
