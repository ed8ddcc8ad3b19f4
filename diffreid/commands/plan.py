"""`diffreid plan --config BUILD.yaml`: GPU time, storage and GPU memory of a build before it runs."""


def register(p):
    p.add_argument("--config", required=True, help="BuildConfig YAML (e.g. configs/real/build-market1501-lora.yaml)")
    p.add_argument("--identities", type=int, help="identities to generate (default: counted from the sources)")
    p.add_argument("--gpu-results", help="GPU-RESULTS.json from benchmarks/gpu_check.py (default: FLOP estimate)")
    p.add_argument("--gpu-tflops", type=float, default=165.0, help="peak TFLOP/s of the GPU (RTX 4090 bf16: 165)")
    p.add_argument("--utilisation", type=float, default=0.35, help="sustained share of the peak (0.35)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field")
    p.set_defaults(func=run)


def run(args):
    from diffreid.cli import CommandError
    from diffreid.cost import Assumptions, format_plan, plan_build
    from diffreid.memory import format_memory, plan_memory
    from diffreid.models.assets import TINY_MODEL
    from diffreid.stages import find_stage

    cfg = find_stage("build").load(args.config, args.overrides, files=args.identities is None)
    identities = args.identities
    if identities is None:
        import tempfile

        from diffreid.data.sources import load_source, selected_identities

        identities = 0
        scratch = tempfile.mkdtemp(prefix="diffreid-plan-")  # toy sources render here
        for src in cfg.sources:
            root, dataset = load_source(src, scratch)
            identities += len(selected_identities(src, dataset, root)[0])
    if identities < 1:
        raise CommandError("no identities to generate: give --identities N")
    plan = plan_build(cfg, identities, args.gpu_results, Assumptions(args.gpu_tflops, args.utilisation))
    print(format_plan(plan, cfg.adapter.mode))
    if cfg.base_model.path != TINY_MODEL:
        memory = plan_memory(cfg)
        cards = tuple(dict.fromkeys([24.0, 80.0] + ([cfg.runtime.gpu_memory_gb] if cfg.runtime.gpu_memory_gb else [])))
        print("\n" + format_memory(memory, cards))
    return 0
