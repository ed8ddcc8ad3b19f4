"""`make bench`: run every benchmarks/bench_*.py and collect their Markdown tables in benchmarks/RESULTS.md."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    parts = [f"# diffreid benchmarks\n\n{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPU cores\n"]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        print(proc.stdout)
        if proc.returncode:
            failed.append(script.name)
            print(proc.stderr[-3000:], file=sys.stderr)
        parts.append(f"## {script.stem}\n\n{proc.stdout.strip() or '(no output: failed)'}\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'RESULTS.md'}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
