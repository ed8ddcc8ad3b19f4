"""Keep Serve replicas on loopback in single-machine mode.

Ray 2.60 starts every Serve replica's inter-deployment gRPC server on ``[::]:0`` (all interfaces,
hard-coded in ``ray/serve/_private/replica.py``). When Ray runs in its single-machine mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: every node address is 127.0.0.1) nothing outside the machine
needs that port, so it is bound to 127.0.0.1 instead. On a real cluster nothing changes.
"""
from __future__ import annotations

import os


def bind_serve_replicas_to_loopback() -> bool:
    """Patch the replica's gRPC bind address; returns True when the patch is active."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        return False
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "_diffreid_loopback", False):
        return True

    def add_port_on_loopback(server, address: str):
        return original(server, "127.0.0.1:0" if address == "[::]:0" else address)

    add_port_on_loopback._diffreid_loopback = True
    replica.add_port_to_grpc_server = add_port_on_loopback
    return True
