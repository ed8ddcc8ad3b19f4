"""Connecting to Ray: an existing cluster (RAY_ADDRESS / `ray job submit`) or a local one on loopback."""
from __future__ import annotations

import os
import socket


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 now (the OS may hand it out again once released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``/RAY_ADDRESS, else start a local one bound to 127.0.0.1 only."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # Ray's single-machine mode binds every port to 127.0.0.1 instead of the machine's network address;
        # it is read when ray is imported, so it is set before the import.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # a loopback-only cluster needs no token; Ray 2.60 would otherwise turn token auth on for later
        # `ray start`s once this writes ~/.ray/auth_token, locking out drivers that send none
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # Ray Train's placement-group cleaner asks the state API (the dashboard) whether its controller lives.
    # A cluster started by ray.init is not recorded as the machine's current cluster, so its workers would
    # look for the dashboard of whatever `ray start` ran last; they are told this one's address instead.
    dashboard_port = free_loopback_port()
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
           "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=dashboard_port, _node_ip_address="127.0.0.1", runtime_env={"env_vars": env})
