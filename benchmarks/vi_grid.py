"""A picture of a toy VI expansion: per expanded identity, its visible crops, how the toy world's own infrared
camera renders that person (ground truth the generator never sees), and the generated IR images (dimmed when
the filter dropped them).

    python benchmarks/vi_grid.py --expansion DIR [--ids 8] --out docs/vi-generated-ir.png

DIR is a finished ``diffreid vi-expand --config configs/toy-vi.yaml`` output (its toy worlds under DIR/toy).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def main() -> None:
    import pandas as pd

    from diffreid.data.toyworld import Identity, read_attributes, render_person

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expansion", required=True)
    ap.add_argument("--ids", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    out = Path(args.expansion)
    df = pd.read_parquet(out / "manifest.parquet")
    pid_map = {e["pid"]: e["source_pid"] for e in json.loads((out / "pid_map.json").read_text())["entries"]}
    people = read_attributes(out / "toy" / "rgb").set_index("pid")
    w, h, gap = 32, 64, 6
    rows = []
    for pid in sorted(df["pid"].unique())[:args.ids]:
        rows_of = df[df["pid"] == pid]
        visible = [Image.open(p).convert("RGB") for p in rows_of[rows_of["origin"] == "source"]["source_path"][:2]]
        ident = Identity.from_row(people.loc[pid_map[pid]].to_dict() | {"pid": pid_map[pid]})
        truth = [render_person(ident, cam, "front", np.random.default_rng(cam), h, w, "ir") for cam in (3, 6)]
        generated = []
        for r in rows_of[rows_of["origin"] == "generated"].itertuples():
            img = Image.open(out / r.file).convert("RGB") if r.file else Image.new("RGB", (w, h))
            generated.append(img if r.kept else Image.fromarray((np.asarray(img) * 0.35).astype(np.uint8)))
        groups = [visible, truth, generated]
        row = Image.new("RGB", (sum(len(g) for g in groups) * w + gap * 2, h), (255, 255, 255))
        x = 0
        for group in groups:
            for img in group:
                row.paste(img.resize((w, h)), (x, 0))
                x += w
            x += gap
        rows.append(row)
    header = 14
    sheet = Image.new("RGB", (max(r.width for r in rows), header + h * len(rows)), (255, 255, 255))
    ImageDraw.Draw(sheet).text((2, 1), "visible | world IR (truth) | generated IR (dim = dropped)", fill=(0, 0, 0))
    for i, row in enumerate(rows):
        sheet.paste(row, (0, header + i * h))
    sheet = sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
