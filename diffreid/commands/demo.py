def register(p):
    p.add_argument("--quick", action="store_true", help="smaller world and fewer epochs (about a third of the time)")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.set_defaults(func=run)


def run(args):
    from diffreid.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0
