"""dotdo: Durable Objects for Python."""
