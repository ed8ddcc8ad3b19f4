"""What a job entrypoint outside the stage registry shares: user errors end it with one line and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable


def run_job(main: Callable[[], int], name: str) -> int:
    from diffreid.errors import DiffreidError

    try:
        return main()
    except (DiffreidError, FileNotFoundError) as err:
        print(f"ray_jobs.{name}: error: {err}", file=sys.stderr)
        return 2
