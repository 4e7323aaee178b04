"""memosctl mcp: a Model Context Protocol server that gives one agent its governed memosd memory as tools."""
