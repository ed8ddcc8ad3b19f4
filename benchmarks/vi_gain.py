"""DiVE's claim on the toy world: does a VI-ReID model improve when the expanded identities are added?

    python benchmarks/vi_gain.py --expansion DIR [--seeds 0 1 2] [--epochs N]

DIR is a finished ``diffreid vi-expand`` output. The VI-ReID model (the expansion's scorer recipe) is trained
per seed on (a) the real VI training identities, (b) the same plus the expanded identities (real RGB + kept
generated IR), (c) control: (a) plus the expanded identities' real RGB only; evaluated on the VI test split
(SYSU-MM01 all/indoor, single-shot, 10 trials). Prints a markdown table (``diffreid.vi.gain``).
"""
from __future__ import annotations

import argparse


def main() -> None:
    from diffreid.vi.gain import gain_table, vi_gain

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expansion", required=True, help="a finished vi-expand output folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: the expansion's scorer epochs")
    args = ap.parse_args()
    print(gain_table(vi_gain(args.expansion, args.seeds, args.epochs)))


if __name__ == "__main__":
    main()
