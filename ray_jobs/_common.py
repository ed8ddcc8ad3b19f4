"""What every job entrypoint shares: user errors end the job with one clear line and exit status 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable


def job_parser(name: str, doc: str, config_help: str, out_default: str, out_help: str,
               set_metavar: str = "KEY=VALUE", set_help: str = "override a config field") -> argparse.ArgumentParser:
    """The arguments every job takes: --config, --out, --set (repeatable) and --address."""
    p = argparse.ArgumentParser(prog=f"python -m ray_jobs.{name}", description=doc.splitlines()[0])
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--out", default=out_default, help=out_help)
    p.add_argument("--set", action="append", default=[], metavar=set_metavar, help=set_help)
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, set by `ray job submit`)")
    return p


def run_job(main: Callable[[], int], name: str) -> int:
    from diffreid.config import ConfigError
    from diffreid.data.types import DatasetError

    try:
        return main()
    except (ConfigError, DatasetError, FileNotFoundError) as err:
        print(f"ray_jobs.{name}: error: {err}", file=sys.stderr)
        return 2
