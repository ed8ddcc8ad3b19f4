"""``diffreid data verify|stats|report|fidelity DIR`` and ``diffreid data summary NAME ROOT``."""
from __future__ import annotations

import json
from pathlib import Path

from diffreid.cli import CommandError


def register(p):
    sub = p.add_subparsers(dest="data_command", metavar="WHAT")
    v = sub.add_parser("verify", help="check a Diff-Person folder: files <-> manifest, checksums, pid map",
                       description="Check a Diff-Person folder: missing and orphan files, checksum mismatches, "
                       "duplicates, kept flag vs folder, stale manifest, pid map. Exit 0 when consistent, "
                       "1 (with a listing) otherwise.")
    v.add_argument("dir", help="Diff-Person output folder")
    v.add_argument("--no-checksums", action="store_true", help="skip re-hashing every file (faster)")
    v.add_argument("--limit", type=int, default=20, help="problems listed per category (20)")
    v.set_defaults(func=run_verify)

    s = sub.add_parser("stats", help="print images/identities and write the identity curve and sample grids",
                       description="Print the images/identities table of a Diff-Person folder and write the "
                       "identity-distribution curve (paper Fig. 5), filter score histograms and per-identity "
                       "sample grids as PNGs.")
    s.add_argument("dir", help="Diff-Person output folder")
    s.add_argument("--out", help="folder for the PNGs (default DIR/report)")
    s.add_argument("--grids", type=int, default=8, help="identities to draw sample grids for (8)")
    s.add_argument("--json", action="store_true", help="print the stats as JSON instead of a table")
    s.set_defaults(func=run_stats)

    r = sub.add_parser("report", help="write DIR/report.html (summary, curves, histograms, grids)",
                       description="Write the static HTML report DIR/report.html with its PNGs in DIR/report/.")
    r.add_argument("dir", help="Diff-Person output folder")
    r.add_argument("--grids", type=int, default=8, help="identities to draw sample grids for (8)")
    r.set_defaults(func=run_report)

    f = sub.add_parser("fidelity", help="measure the identity fidelity of a Diff-Person build -> DIR/fidelity.json",
                       description="Score the generated images of a Diff-Person build against the real images of "
                       "their source identities with a Re-ID reader that is not the filter's model (identity "
                       "accuracy, Rank-1/mAP vs the real gallery, diversity) and, on toy worlds, against the true "
                       "attributes (views, clothing, bag, hair); for all, kept and dropped images. Prints a table "
                       "and writes DIR/fidelity.json.")
    f.add_argument("dir", help="Diff-Person output folder")
    f.add_argument("--reader", help="Re-ID model folder (reid_model.json + model.safetensors) to read identities "
                   "with; default: train one on the real source images into DIR/fidelity/reader (cached)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a FidelityConfig field, e.g. --set reader.epochs=4 (defaults: the build's own "
                   "fidelity section)")
    f.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    f.set_defaults(func=run_fidelity)

    m = sub.add_parser("summary", help="print the split summary of any supported Re-ID dataset",
                       description="Load a dataset with diffreid.data.load_dataset(NAME, ROOT) and print its "
                       "train/query/gallery summary.")
    m.add_argument("name", help="dataset name, e.g. market1501, msmt17, market_layout")
    m.add_argument("root", help="dataset root folder")
    m.add_argument("--splits", help="comma-separated splits to read, for readers that take it "
                   "(e.g. train for a Diff-Person folder read as market_layout)")
    m.set_defaults(func=run_summary)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _root(path: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise CommandError(f"{root} is not a folder; expected a Diff-Person output folder")
    return root


def run_verify(args) -> int:
    from diffreid.diffperson import verify

    report = verify(_root(args.dir), checksums=not args.no_checksums, progress=True)
    print(report.format(limit=args.limit))
    return 0 if report.ok else 1


def run_stats(args) -> int:
    from diffreid.diffperson import format_stats, write_plots

    root = _root(args.dir)
    out = Path(args.out) if args.out else root / "report"
    plots = write_plots(root, out, max_identities=args.grids)
    if args.json:
        print(json.dumps(plots["stats"], indent=2))
    else:
        print(format_stats(plots["stats"], root))
        curve = plots["identity_distribution"] or "no identity curve (every identity has the same count)"
        print(f"  plots: {curve}, {len(plots['histograms'])} histograms, {len(plots['grids'])} sample grids in {out}")
    return 0


def run_report(args) -> int:
    from diffreid.diffperson import write_report

    print(write_report(_root(args.dir), max_identities=args.grids))
    return 0


def run_fidelity(args) -> int:
    from diffreid.diffperson.fidelity import FIDELITY, format_fidelity, load_fidelity_config, measure_fidelity

    root = _root(args.dir)
    cfg = load_fidelity_config(root, args.overrides, reader_model_dir=args.reader)
    result = measure_fidelity(root, cfg, progress=True)
    print(json.dumps(result, indent=2) if args.json else format_fidelity(result))
    if not args.json:
        print(f"  written: {root / FIDELITY}")
    return 0


def run_summary(args) -> int:
    from diffreid.data import load_dataset

    options = {"splits": tuple(args.splits.split(","))} if args.splits else {}
    print(load_dataset(args.name, args.root, **options).summary())
    return 0
