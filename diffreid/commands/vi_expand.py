"""`diffreid vi-expand`: DiVE — infrared images for an RGB-only dataset's identities, written in SYSU-MM01 layout."""


def register(p):
    p.add_argument("--config", required=True, help="VIExpandConfig YAML (configs/toy-vi.yaml runs on the toy world)")
    p.add_argument("--out", required=True, help="output folder: cam1..cam6/, exp/, manifest.parquet, adapter/, "
                   "scorer/, summary.json (re-running continues where it stopped)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set ir_images_per_id=10 --set adapter.steps=200")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args):
    from diffreid.cli import CommandError
    from diffreid.filtering import FilterError, GalleryError
    from diffreid.generation.adapters import AdapterError
    from diffreid.models import PipelineLoadError
    from diffreid.vi import VIExpandConfig, expand_vi

    cfg = VIExpandConfig.load(args.config, overrides=args.overrides)
    try:
        result = expand_vi(cfg, args.out, progress=not args.quiet)
    except (AdapterError, FilterError, GalleryError, PipelineLoadError) as err:
        raise CommandError(str(err)) from None
    s = result.summary
    print(f"VI expansion in {result.out}: {s['expanded_ids']}/{s['rgb_ids']} RGB identities expanded "
          f"(new pids {s['new_pids'][0]}..{s['new_pids'][1]}), {s['generated_kept']}/{s['generated']} generated "
          f"images kept, {s['images_written']} images written")
    if s["generated"] and not s["generated_kept"]:
        print(f"note: no generated image passed the filter (filter.threshold={cfg.filter.threshold}); a tiny random "
              "pipeline draws no people. Scores are in manifest.parquet, the images under dropped/")
    print(f"modality adapter: {s['adapter']['steps']} steps in {s['adapter']['seconds']}s "
          f"(loss {s['adapter']['loss_first']:.4f} -> {s['adapter']['loss_last']:.4f})")
    for mode in ("sysu_all", "sysu_indoor"):
        if mode in s["scorer"]:
            m = s["scorer"][mode]
            print(f"scorer {mode}: Rank-1 {m['Rank-1']:.3f}  mAP {m['mAP']:.3f}  mINP {m['mINP']:.3f}")
    return 0
