def register(p):
    p.add_argument("--config", required=True, help="FinetuneEvalConfig YAML (e.g. configs/toy-finetune.yaml)")
    p.add_argument("--out", required=True, help="writes results.csv, results.md, results.png, results_runs.csv")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--ray", action="store_true", help="run the fine-tune runs as parallel Ray tasks")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster on 127.0.0.1)")
    p.set_defaults(func=run)


def run(args):
    from pathlib import Path

    from diffreid.reid.finetune import FinetuneEvalConfig, run_finetune_eval

    cfg = FinetuneEvalConfig.load(args.config, overrides=args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    if args.ray:
        from diffreid.distributed.cluster import init_ray
        from diffreid.distributed.finetune import run_finetune_eval_ray

        init_ray(args.address)
        run_finetune_eval_ray(cfg, out)
    else:
        run_finetune_eval(cfg, out)
    print((out / "results.md").read_text())
    return 0
