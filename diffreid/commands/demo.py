def register(p):
    p.add_argument("--quick", action="store_true", help="smaller world, fewer images and epochs (under 5 min)")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a stage's field, e.g. --set pretrain.epochs=2")
    p.add_argument("--address", help="Ray cluster to use (default: RAY_ADDRESS, else a local loopback one)")
    p.set_defaults(func=run)


def run(args):
    from diffreid.demo import run_demo

    run_demo(args.out, quick=args.quick, overrides=args.overrides, address=args.address)  # prints the report path
    return 0
