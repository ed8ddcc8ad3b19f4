def register(p):
    p.add_argument("--config", help="PretrainConfig YAML (e.g. configs/toy-pretrain.yaml); default: the paper's recipe")
    p.add_argument("--data", required=True, help="Diff-Person or any Market-layout folder (its train split is used)")
    p.add_argument("--out", required=True, help="writes OUT/backbone.safetensors and OUT/recipe.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--in-process", action="store_true", help="skip Ray Train: one process, local checkpoints")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster on 127.0.0.1)")
    p.set_defaults(func=run)


def run(args):
    from pathlib import Path

    from diffreid.data import load_dataset
    from diffreid.reid.pretrain import PretrainConfig, pretrain_in_process

    cfg = PretrainConfig.load(args.config, overrides=args.set)
    records = load_dataset("market_layout", args.data, splits=("train",)).train
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    if args.in_process:
        path = pretrain_in_process(cfg, records, out)
    else:
        from diffreid.distributed.cluster import init_ray
        from diffreid.distributed.train import pretrain_with_ray

        init_ray(args.address)
        pretrain_with_ray(cfg, records, out)
        path = out / "backbone.safetensors"
    print(f"backbone: {path}\nrecipe:   {out / 'recipe.json'}")
    return 0
