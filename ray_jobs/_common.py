"""What every job entrypoint shares: user errors end the job with one clear line and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable


def run_job(main: Callable[[], int], name: str) -> int:
    from diffreid.config import ConfigError
    from diffreid.data.types import DatasetError

    try:
        return main()
    except (ConfigError, DatasetError, FileNotFoundError) as err:
        print(f"ray_jobs.{name}: error: {err}", file=sys.stderr)
        return 2
