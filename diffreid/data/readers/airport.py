"""Airport (ALERT Airport Re-ID, Karanam et al., TPAMI 2019): 39,902 boxes, 9,651 ids, 6 cameras."""
from __future__ import annotations

import os

from diffreid.data.readers._files import check_exist, dataset_root, locate, read_lines
from diffreid.data.readers._registry import register_dataset
from diffreid.data.readers.market import is_market_layout, read_market_layout
from diffreid.data.types import DatasetError, ImageRecord, ReIDDataset

INDEX_FILES = ("filepath.txt", "personID.txt", "camID.txt")
FORMS = ("expected either filepath.txt + personID.txt + camID.txt (the ALERT release as public toolkits read it) "
         "or a Market-layout copy with bounding_box_train/, bounding_box_test/ and query/")


def _read_column(path: str, what: str) -> list[str]:
    return [text for _, text in read_lines(path, f"Airport {what} file", "one entry per line, in step with "
                                                                          "filepath.txt, personID.txt and camID.txt")]


def _ints(path: str, values: list[str]) -> list[int]:
    for i, v in enumerate(values, 1):
        if not v.lstrip("-").isdigit():
            raise DatasetError(f"{path}: entry {i} is {v!r}: expected one integer per line")
    return [int(v) for v in values]


@register_dataset("airport")
def airport(root, *, pid_range: tuple[int, int] | None = None, check_files: bool = True) -> ReIDDataset:
    """Airport, in one of the two forms that can be justified from public material.

    1. Market-layout copy (``bounding_box_train/``, ``bounding_box_test/``, ``query/``): read like
       ``market_layout``; the only form with a query/gallery split.
    2. The ALERT release as public toolkits read it (fast-reid ``AirportALERT``, others): ``root`` (or its
       ``AirportALERT/`` sub-folder) holds three parallel line files, ``filepath.txt`` (relative image paths,
       ``\\`` or ``/`` separated), ``personID.txt`` and ``camID.txt`` (one integer per line). Every public
       reader uses this form as training data only, so train gets all labelled images and query/gallery stay
       empty: evaluate on Airport through a Market-layout copy. pid 0 is dropped (as one public reader does);
       camera values are mapped to 0..C-1 in sorted order. The public readers also keep only a pid range (one
       11001..401999, another below 1320011) without documenting why, so no range is applied unless
       ``pid_range=(low, high)`` (inclusive) asks for one.

    Anything else raises ``DatasetError``: the official benchmark's partition files could not be pinned down.
    """
    root = dataset_root(root)
    if is_market_layout(root):
        return read_market_layout(root, "airport")
    base = locate(root, INDEX_FILES[0], ("AirportALERT", "airport"))
    paths = [os.path.join(base, f) for f in INDEX_FILES]
    if not any(os.path.isfile(p) for p in paths):
        raise DatasetError(f"not an Airport dataset folder: {root} ({FORMS})")
    if pid_range is not None and not (len(pid_range) == 2 and all(isinstance(v, int) for v in pid_range)
                                      and pid_range[0] <= pid_range[1]):
        raise DatasetError(f"bad option pid_range={pid_range!r}: expected (low, high) integers with low <= high")

    rels = _read_column(paths[0], "image path")
    pids = _ints(paths[1], _read_column(paths[1], "person id"))
    cams = _ints(paths[2], _read_column(paths[2], "camera id"))
    if not len(rels) == len(pids) == len(cams):
        raise DatasetError(f"Airport index files disagree: {len(rels)} paths in {paths[0]}, {len(pids)} ids in "
                           f"{paths[1]}, {len(cams)} cameras in {paths[2]} (expected one line per image in each)")
    cam_index = {c: i for i, c in enumerate(sorted(set(cams)))}
    train = [ImageRecord(os.path.join(base, rel.replace("\\", "/").lstrip("/")), pid, cam_index[cam], "rgb")
             for rel, pid, cam in zip(rels, pids, cams)
             if pid > 0 and (pid_range is None or pid_range[0] <= pid <= pid_range[1])]
    if not train:
        raise DatasetError(f"no Airport images left in {paths[0]} after dropping pid 0"
                           + (f" and keeping pid_range={pid_range}" if pid_range else ""))
    if check_files:
        check_exist((r.path for r in train), paths[0])
    return ReIDDataset(name="airport", root=base, train=train)
