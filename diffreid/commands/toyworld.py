"""`diffreid toyworld`: render the procedural pedestrian world to a Market-1501 (or SYSU-MM01) folder."""
from __future__ import annotations

import argparse
import time

from diffreid.cli import CommandError


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created; must be absent or empty, or hold "
                   "the same world, in which case nothing is done)")
    p.add_argument("--ids", type=int, help="identities per split: N train and N test (default 100)")
    p.add_argument("--cams", type=int, help="number of cameras (default 6)")
    p.add_argument("--seed", type=int, help="world seed (default 0)")
    p.add_argument("--size", help="image size HxW, e.g. 128x64 (default) or 64x32")
    p.add_argument("--ir-cams", help="comma-separated 1-based cameras rendered as infrared, e.g. 3,6")
    p.add_argument("--layout", choices=["market", "sysu"], help="folder layout (default market)")
    p.add_argument("--config", help="YAML file with ToyWorldConfig fields; flags override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set nuisance=1.5 (repeatable)")
    p.set_defaults(func=run)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise CommandError(f"--size {text!r}: expected HxW such as 128x64") from None
    return h, w


def _parse_cams(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CommandError(f"--ir-cams {text!r}: expected comma-separated camera numbers such as 3,6") from None


def run(args: argparse.Namespace) -> int:
    from diffreid.data.toyworld import ToyWorldConfig, render_world

    fields: dict = {}
    if args.ids is not None:
        fields.update(ids_train=args.ids, ids_test=args.ids)
    if args.cams is not None:
        fields["cams"] = args.cams
    if args.seed is not None:
        fields["seed"] = args.seed
    if args.size is not None:
        fields["height"], fields["width"] = _parse_size(args.size)
    if args.ir_cams is not None:
        fields["ir_cams"] = _parse_cams(args.ir_cams)
    if args.layout is not None:
        fields["layout"] = args.layout
    flags = [f"{k}={v}" for k, v in fields.items()]
    cfg = ToyWorldConfig.load(args.config, overrides=[*flags, *args.set])

    t0 = time.time()
    out = render_world(cfg, args.out)
    print(f"toy world ({cfg.layout} layout, {cfg.ids_train} train / {cfg.ids_test} test ids, {cfg.cams} cams, "
          f"{cfg.height}x{cfg.width}) at {out} [{time.time() - t0:.1f}s]")
    return 0
