"""`make bench`: run every benchmarks/bench_*.py and write benchmarks/RESULTS.md: one summary table of the
headline figures first, then each benchmark's own tables."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _headline import MARK  # noqa: E402


def split_headlines(stdout: str) -> tuple[list[dict], str]:
    heads, rest = [], []
    for line in stdout.splitlines():
        (heads.append(json.loads(line[len(MARK):])) if line.startswith(MARK) else rest.append(line))
    return heads, "\n".join(rest).strip()


def summary_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| benchmark | measure | value | unit | note |", "|---|---|---:|---|---|"]
    for bench, h in rows:
        lines.append(f"| {bench} | {h['measure']} | {h['value']:,} | {h['unit']} | {h.get('note', '')} |")
    return "\n".join(lines)


def main() -> int:
    only = sys.argv[1:]
    scripts = [s for s in sorted(HERE.glob("bench_*.py")) if not only or s.stem in only]
    started = datetime.datetime.now()
    sections, heads, failed = [], [], []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        found, text = split_headlines(proc.stdout)
        print(text, flush=True)
        if proc.returncode:
            failed.append(script.name)
            print(proc.stderr[-3000:], file=sys.stderr)
        heads += [(script.stem, h) for h in found]
        sections.append(f"## {script.stem}\n\n{text or '(no output: failed)'}\n")
    header = (f"# diffreid benchmarks\n\n{started:%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPU cores" + (f"; FAILED: {', '.join(failed)}" if failed else "") + "\n")
    page = "\n".join([header, "## Summary\n", summary_table(heads) + "\n", *sections])
    (HERE / "RESULTS.md").write_text(page)
    print(f"\n{summary_table(heads)}\n\nwrote {HERE / 'RESULTS.md'}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
