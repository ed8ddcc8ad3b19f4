"""Does the filter earn its place? Pre-train on a finished demo's kept images, on a random subset of its
generated images of the same size, and on all of them; fine-tune each (and random init) in Fs 30%.

    python benchmarks/filter_payoff.py OUT_OF_DIFFREID_DEMO [--seeds 0 1 2]

Uses the build's own config (OUT/diff-person/config.yaml), the preset's pretrain and finetune_eval
sections (--preset, default diffreid/configs/demo.yaml) and the library's in-process stages. Prints
one markdown table: pre-training set, images, Fs 30% mAP mean ± std over fine-tune seeds.
"""
from __future__ import annotations

import argparse
import copy
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo_out", help="the --out folder of a finished `diffreid demo`")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default=str(REPO / "diffreid" / "configs" / "demo.yaml"))
    args = p.parse_args(argv)

    from diffreid.build import load_build_config
    from diffreid.data.sources import source_root
    from diffreid.config import read_yaml
    from diffreid.data.types import ImageRecord
    from diffreid.diffperson.manifest import read_manifest
    from diffreid.reid.finetune import FinetuneEvalConfig, run_finetune_eval, summarise
    from diffreid.reid.pretrain import PretrainConfig, pretrain_in_process

    demo = Path(args.demo_out)
    dp = demo / "diff-person"
    preset = read_yaml(args.preset)
    build = load_build_config(dp)
    df = read_manifest(dp)
    gen = df[df["origin"] == "generated"].reset_index(drop=True)

    def records(rows) -> list[ImageRecord]:  # manifest paths are relative to the build (kept and dropped/)
        return [ImageRecord(str(dp / r.file), int(r.pid), 0) for r in rows.itertuples()]

    kept = gen[gen["kept"].astype(bool)]
    rng = random.Random(0)
    subset = gen.iloc[sorted(rng.sample(range(len(gen)), len(kept)))]
    arms = {"random init": None, "kept by the filter": kept, "random subset, same size": subset,
            "all generated": gen}
    target = {"name": build.sources[0].dataset, "root": str(source_root(build.sources[0], dp))}
    pre_data = copy.deepcopy(preset["pretrain"])
    pre_data.pop("ray", None)
    pre_cfg = PretrainConfig.model_validate(pre_data)
    ft_data = copy.deepcopy(preset["finetune_eval"])
    ft_data.update(settings=["fs"], fractions=[30], seeds=args.seeds, target=target)
    work = demo / "filter-payoff"
    inits = {}
    for name, rows in arms.items():
        if rows is None:
            inits[name] = None
            continue
        slug = "".join(ch if ch.isalnum() else "-" for ch in name)
        out = work / "pretrain" / slug
        weights = out / "backbone.safetensors"
        if not weights.is_file():
            weights = pretrain_in_process(pre_cfg, records(rows), out, progress=False)
        inits[name] = str(weights)
    ft = FinetuneEvalConfig.model_validate({**ft_data, "inits": inits})
    summary = summarise(run_finetune_eval(ft, work / "finetune", progress=False))
    sizes = {name: (0 if rows is None else len(rows)) for name, rows in arms.items()}
    print("| pre-training set | images | Fs 30% mAP (mean ± std) |\n|---|---|---|")
    for _, r in summary.iterrows():
        print(f"| {r['init']} | {sizes[r['init']]} | {100 * r['mAP']:.1f} ± {100 * r['mAP_std']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
