"""Concurrency and routing: the supervisor, activations, turns and stubs. Internal."""
