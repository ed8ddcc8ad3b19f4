"""`diffreid serve`: the augmentation service (serve_apps/) on a local Ray, bound to loopback by default."""
from diffreid.cli import CommandError


def register(p):
    p.add_argument("--config", default=None,
                   help="ServeSettings YAML (storage, token, limits, build settings); none = the tiny toy setup "
                        "under outputs/serve, ready to try at once")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a settings field")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.set_defaults(func=run)


def run(args):
    import os
    import signal
    import threading

    from diffreid.distributed.cluster import init_ray

    # Ray CPUs are scheduling slots: the three deployments want 2.25, and they idle between requests
    init_ray(num_cpus=max(4, os.cpu_count() or 1))
    from ray import serve

    from serve_apps.app import AppArgs, build_app, load_settings

    app_args = AppArgs(config=args.config, overrides=args.set)
    settings = load_settings(app_args)  # errors in the settings file surface here as one line
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
    except Exception as err:  # e.g. the port is taken
        raise CommandError(f"cannot start Serve on {args.host}:{args.port}: {err}") from None
    print(f"preparing assets in {settings.assets_dir} (first run: renders the toy world, trains the filter) ...")
    serve.run(build_app(app_args), name="diffreid", route_prefix="/")
    auth = " (Bearer token required)" if settings.resolved_token() else ""
    print(f"serving on http://{args.host}:{args.port}{auth} — API docs at /docs; store: {settings.storage}")
    print(f"try: diffreid augment --url http://{args.host}:{args.port} --images DIR --out DIR   (Ctrl-C stops)")
    stop = threading.Event()  # our own handlers: Ctrl-C must reach this loop whatever Ray installed
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    print("stopping: shutting Serve down ...", flush=True)
    stop_within(SHUTDOWN_S)
    print("stopped", flush=True)
    return 0


SHUTDOWN_S = 60  # Serve waits for busy replicas; past this the local Ray (and them) is stopped anyway


def stop_within(seconds: float) -> None:
    """Ctrl-C: shut Serve down gracefully for up to ``seconds``, then stop this command's Ray either way."""
    import threading

    import ray
    from ray import serve

    graceful = threading.Thread(target=serve.shutdown, daemon=True)
    graceful.start()
    graceful.join(seconds)
    if graceful.is_alive():
        print(f"Serve did not stop within {seconds:.0f} s; stopping its Ray", flush=True)
    ray.shutdown()
