def register(p):
    p.add_argument("--config", required=True, help="BuildConfig YAML (e.g. configs/toy.yaml)")
    p.add_argument("--out", required=True, help="Diff-Person output folder (re-running resumes it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.set_defaults(func=run)


def run(args):
    from diffreid.build import BuildConfig, build_diff_person

    cfg = BuildConfig.load(args.config, overrides=args.set)
    report = build_diff_person(cfg, args.out)
    print(f"report: {report}")
    return 0
