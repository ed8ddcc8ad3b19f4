"""`diffreid check CONFIG`: recognise the stage of a config file, validate it before any work and print it
resolved, or list every problem at once (dotted field paths) and exit 2."""


def register(p):
    p.add_argument("config", nargs="+", help="config file(s): any stage's YAML, shipped or yours")
    p.add_argument("--stage", help="the stage to validate against (default: recognised from the file's keys)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field before validating")
    p.add_argument("--no-files", action="store_true", help="check the fields only, not that the files and folders "
                   "they name exist (a config written for another machine)")
    p.add_argument("--quiet", action="store_true", help="print one line per file instead of the resolved config")
    p.set_defaults(func=run)


def run(args):
    import sys

    import yaml

    from diffreid.errors import DiffreidError
    from diffreid.stages import check_config

    failed = 0
    for path in args.config:
        try:
            stage, cfg = check_config(path, args.stage, args.overrides, files=not args.no_files)
        except (DiffreidError, FileNotFoundError) as err:
            print(f"{path}: error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: valid {stage.name} config ({type(cfg).__name__})")
        if not args.quiet:
            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 2 if failed else 0
