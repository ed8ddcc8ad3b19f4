"""`diffreid train`: BoT-style Re-ID training on a Market-layout folder, then evaluation on its query/gallery."""


def register(p):
    p.add_argument("--data", required=True, help="dataset folder in Market-1501 layout "
                   "(bounding_box_train, query, bounding_box_test)")
    p.add_argument("--out", required=True, help="output folder: model.safetensors, reid_model.json, "
                   "train_config.yaml, history.json, metrics.json")
    p.add_argument("--config", help="ReIDTrainConfig YAML (e.g. configs/toy-reid.yaml); defaults = BoT")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set epochs=5 --set model.backbone=resnet18")
    p.add_argument("--baseline", action="store_true",
                   help="also evaluate the untrained (random-init or pre-trained-file) model for comparison")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args):
    import time
    from pathlib import Path

    from diffreid.data import load_dataset
    from diffreid.io import atomic_write_json
    from diffreid.reid.model import build_reid_model
    from diffreid.reid.train import ReIDTrainConfig, evaluate_reid, train_reid

    # 1. config and data
    cfg = ReIDTrainConfig.load(args.config, overrides=args.overrides)
    dataset = load_dataset("market_layout", args.data)
    print(dataset.summary())

    # 2. optional baseline, training, evaluation
    rows = {}
    if args.baseline:
        num_ids = len({r.pid for r in dataset.train})
        rows["before training"] = evaluate_reid(build_reid_model(cfg.model, num_ids), dataset, cfg)
    t0 = time.time()
    result = train_reid(cfg, dataset.train, out_dir=args.out, progress=not args.quiet)
    train_seconds = time.time() - t0
    rows[f"trained ({cfg.model.backbone}, {cfg.epochs} epochs)"] = evaluate_reid(result.model, dataset, cfg)

    # 3. report
    out = Path(args.out)
    atomic_write_json(out / "metrics.json", {"dataset": str(args.data), "train_seconds": train_seconds,
                                             "results": rows})
    print(format_table(rows))
    print(f"training took {train_seconds:.1f}s; model saved in {out}")
    return 0


def format_table(rows: dict[str, dict[str, float]]) -> str:
    cols = ["mAP", "Rank-1", "Rank-5", "mINP"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * metrics[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)
