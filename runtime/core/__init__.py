"""The turn core: activations and their table, the turn gate, the call path, the values
that cross between actors. It imports no service: services register hooks on it."""
