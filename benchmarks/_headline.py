"""Headline figures: each benchmark prints its own tables plus one machine-readable line per key figure,
which ``run_all.py`` gathers into the single summary table at the top of RESULTS.md."""
import json

MARK = "@headline "


def headline(measure: str, value: float, unit: str, note: str = "") -> None:
    print(MARK + json.dumps({"measure": measure, "value": value, "unit": unit, "note": note}), flush=True)
