"""A static HTML report of a Diff-Person folder: ``report.html`` plus its PNGs in ``report/``."""
from __future__ import annotations

import datetime as dt
import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffreid.diffperson.manifest import verify
from diffreid.diffperson.stats import write_plots
from diffreid.diffperson.writer import SKIPPED
from diffreid.io import atomic_write_text

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .3em 0; }
.headline { font-size: 1.1em; } .ok { color: #1a7f37; } .bad { color: #b42318; } .note { color: #666; font-size: .9em; }
"""


def _table(df) -> str:
    return df.to_html(index=False, escape=True, border=0, na_rep="", float_format=lambda v: f"{v:.4g}")


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items.items())
    return f"<table>{rows}</table>"


def _img(path: Path, base: Path, alt: str) -> str:
    rel = Path(os.path.relpath(path, base)).as_posix()
    return f'<img src="{html.escape(rel)}" alt="{html.escape(alt)}">'


def write_report(root: str | Path, extra_tables: Mapping[str, Any] | None = None,
                 skipped_identities: list[dict] | None = None, max_identities: int = 8,
                 title: str = "Diff-Person report", out: str | Path | None = None,
                 lead_tables: Mapping[str, Any] | None = None, lead_images: Mapping[str, Path] | None = None,
                 notes: list[str] | None = None, headline: str | None = None) -> Path:
    """Write ``out`` (default ``root/report.html``): ``headline`` (one sentence: the answer), the
    identity-fidelity table when ``root/fidelity.json`` exists, then ``notes``/``lead_tables``/``lead_images`` (e.g. the study's results), then the summary,
    identity-distribution curve, score histograms, sample grids, verify result, skipped identities (passed here
    and/or recorded by the writer) and ``extra_tables`` (heading → DataFrame, e.g. the fine-tune results). All
    text is HTML-escaped."""
    import pandas as pd

    from diffreid.diffperson.fidelity import fidelity_note, fidelity_rows, read_fidelity

    root = Path(root)
    out = Path(out) if out is not None else root / "report.html"
    page_dir = out.parent
    plots = write_plots(root, root / "report", max_identities=max_identities)
    s = plots["stats"]
    check = verify(root, checksums=False)
    ipi = s["images_per_identity"]

    skipped = list(json.loads((root / SKIPPED).read_text())) if (root / SKIPPED).exists() else []
    skipped += list(skipped_identities or [])

    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="note">{html.escape(str(root.resolve()))} · written '
             f"{html.escape(dt.datetime.now().isoformat(timespec='seconds'))}</p>"]
    if headline:
        parts.append(f'<p class="headline"><b>{html.escape(headline)}</b></p>')
    fidelity = read_fidelity(root)
    if fidelity is not None:
        parts += ["<h2>Identity fidelity of the generated images</h2>",
                  f'<p class="note">{html.escape(fidelity_note(fidelity))} Identity accuracy: the nearest real '
                  "identity is the claimed one; attributes: the toy attribute predictor reads the identity's true "
                  "value. All figures: <code>diffreid data fidelity</code>, README.</p>",
                  _table(pd.DataFrame(fidelity_rows(fidelity)))]
    parts += [f'<p>{html.escape(n)}</p>' for n in notes or []]
    for heading, df in (lead_tables or {}).items():
        table = df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)
        parts += [f"<h2>{html.escape(str(heading))}</h2>", _table(table)]
    for heading, path in (lead_images or {}).items():
        parts += [f"<h2>{html.escape(str(heading))}</h2>", _img(Path(path), page_dir, str(heading))]
    parts += ["<h2>Diff-Person summary</h2>",
             _kv_table({"images (kept)": s["images"], "identities": s["identities"], "generated": s["generated"],
                        "dropped by filter": s["dropped"], "copied source images": s["source_copied"],
                        "identities in the pid map": check.counts.get("mapped_identities", 0),
                        "skipped identities": len(skipped),
                        "keep rate": f"{s['keep_rate'] * 100:.1f}%",
                        "images per identity": f"min {ipi['min']} · median {ipi['median']:g} · "
                                               f"mean {ipi['mean']:.1f} · max {ipi['max']}"})]
    if s["by_source"]:
        parts += ["<h3>By source dataset</h3>",
                  _table(pd.DataFrame([{"source dataset": k, **v} for k, v in s["by_source"].items()]))]
    if s["filters"]:
        parts += ["<h3>Filter scores</h3>",
                  _table(pd.DataFrame([{"filter": k, **v} for k, v in s["filters"].items()]))]
    status = "ok" if check.ok else "bad"
    parts += [f'<p>verify (files ↔ manifest, no checksums): <b class="{status}">'
              f"{'consistent' if check.ok else 'INCONSISTENT'}</b></p>"]
    if not check.ok:
        parts.append(f"<pre>{html.escape(check.format())}</pre>")

    if plots["identity_distribution"] is not None:
        parts += ["<h2>Identity distribution</h2>",
                  '<p class="note">A point (X, Y): Y% of identities have fewer than X images (paper Fig. 5).</p>',
                  _img(plots["identity_distribution"], page_dir, "identity distribution")]
    if plots["histograms"]:
        parts.append("<h2>Filter score histograms</h2>")
        parts += [_img(p, page_dir, p.stem) for p in plots["histograms"]]
    if plots["grids"]:
        parts += ["<h2>Samples</h2>",
                  f'<p class="note">Rows: source images, kept generated images, dropped generated images (highest '
                  f"scores first). First {len(plots['grids'])} identities.</p>"]
        parts += [_img(p, page_dir, p.stem) for p in plots["grids"]]
    parts.append("<h2>Skipped identities</h2>")
    if skipped:
        table = pd.DataFrame(skipped)
        first = [c for c in ("source_dataset", "source_pid", "reason") if c in table]
        parts.append(_table(table[first + [c for c in table if c not in first]]))
    else:
        parts.append('<p class="note">none</p>')
    for heading, df in (extra_tables or {}).items():
        table = df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)
        parts += [f"<h2>{html.escape(str(heading))}</h2>", _table(table)]

    page = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    atomic_write_text(out, page)
    return out
