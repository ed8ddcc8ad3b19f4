"""One registry of dataset readers, looked up by name (``load_dataset("market1501", root)``)."""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from diffreid.data.types import DatasetError, ReIDDataset

Reader = Callable[..., ReIDDataset]
READERS: dict[str, Reader] = {}
ALIASES = {"market_1501": "market1501", "sysu": "sysu_mm01", "cuhk03_np": "cuhk03", "airport_alert": "airport",
           "cuhk_sysu": "cuhksysu", "prid": "prid2011", "prid_2011": "prid2011", "i_lids": "ilids",
           "qmul_ilids": "ilids", "qmul_grid": "grid"}


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    def add(reader: Reader) -> Reader:
        if name in READERS:
            raise ValueError(f"dataset reader {name!r} registered twice")
        READERS[name] = reader
        return reader

    return add


def available_datasets() -> list[str]:
    return sorted(READERS)


def load_dataset(name: str, root: str | os.PathLike, /, **options) -> ReIDDataset:
    """Read the dataset ``name`` found at ``root``; ``options`` are the reader's keyword options."""
    key, reader = _reader(name)
    accepted = reader_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"{key}: unknown option(s) {', '.join(unknown)}: "
                           f"expected {', '.join(accepted) if accepted else 'no options'}")
    return reader(root, **options)


def _reader(name: str) -> tuple[str, Reader]:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in READERS:
        raise DatasetError(f"unknown dataset {name!r}: expected one of {', '.join(available_datasets())}")
    return key, READERS[key]


def reader_options(name: str) -> list[str]:
    """The keyword options the reader of ``name`` accepts (e.g. ``split`` for the DG targets)."""
    return [p for p in inspect.signature(_reader(name)[1]).parameters if p != "root"]
