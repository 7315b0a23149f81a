# workerd serving room.js: the Room namespace on local disk (SQLite), on 127.0.0.1 only.
# benchmarks/websocket_bench.py passes the listening socket (-S http=FD) and the storage
# folder (-d storage=DIR); alone: workerd serve config.capnp -d storage=/tmp/room
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "room", worker = .room),
    (name = "storage", disk = (path = "storage", writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:8790", http = (), service = "room")],
);

const room :Workerd.Worker = (
  compatibilityDate = "2025-06-01",
  modules = [(name = "room.js", esModule = embed "room.js")],
  durableObjectNamespaces = [(className = "Room", uniqueKey = "dotdo-websocket-bench-room", enableSql = true)],
  durableObjectStorage = (localDisk = "storage"),
  bindings = [(name = "ROOM", durableObjectNamespace = "Room")],
);
