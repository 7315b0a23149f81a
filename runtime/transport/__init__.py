"""The msgpack/TCP transport: its frames, the server, the client connection, the links
between the workers of a server, and the limits that keep a server up."""
