"""Folders in the Market-1501 layout: Market-1501 itself, CUHK03-NP, and any folder written that way
(the toy world, Diff-Person outputs, converted copies of other datasets)."""
from __future__ import annotations

import os
from collections.abc import Sequence

from diffreid.data.readers._files import (MARKET_EXAMPLE, choose, dataset_root, list_images, locate,
                                          match_market_name, require_dir, require_records, warn_skipped)
from diffreid.data.readers._registry import register_dataset
from diffreid.data.types import DatasetError, ImageRecord, ReIDDataset

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_FORM = (f"a Market-layout folder holds bounding_box_train/, bounding_box_test/ and query/ "
               f"with images named like {MARKET_EXAMPLE}")
ALL_SPLITS = ("train", "query", "gallery")


def read_market_folder(folder: str, *, keep_distractors: bool) -> list[ImageRecord]:
    """Records of one Market-layout split folder. pid -1 (junk) is dropped; pid 0 (distractor) is kept
    only when ``keep_distractors`` (the gallery). Names that do not parse are skipped with one warning."""
    records, skipped = [], []
    prefix = os.path.join(folder, "")
    for name in list_images(folder):
        parsed = match_market_name(name)
        if parsed is None:
            skipped.append(name)
            continue
        pid, camid, seq, frame = parsed
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        records.append(ImageRecord(prefix + name, pid, camid, "rgb", seq, frame))
    warn_skipped(folder, skipped, f"Market names like {MARKET_EXAMPLE}")
    return records


def read_market_layout(root: str, name: str, splits: Sequence[str] = ALL_SPLITS) -> ReIDDataset:
    if isinstance(splits, str) or not splits:
        raise DatasetError(f"bad option splits={splits!r}: expected a non-empty list drawn from {ALL_SPLITS}")
    for split in splits:
        choose("splits", split, ALL_SPLITS)
    dataset = ReIDDataset(name=name, root=root)
    for split in splits:
        folder = require_dir(os.path.join(root, MARKET_FOLDERS[split]), f"{split} folder", MARKET_FORM)
        records = read_market_folder(folder, keep_distractors=split == "gallery")
        setattr(dataset, split, require_records(records, folder, f"images named like {MARKET_EXAMPLE}"))
    return dataset


def is_market_layout(root: str) -> bool:
    return all(os.path.isdir(os.path.join(root, f)) for f in MARKET_FOLDERS.values())


@register_dataset("market_layout")
def market_layout(root, *, splits: Sequence[str] = ALL_SPLITS, name: str = "market_layout") -> ReIDDataset:
    """Any folder in the Market-1501 layout.

    ``bounding_box_train/`` -> train, ``query/`` -> query, ``bounding_box_test/`` -> gallery. Names follow
    ``<pid>_c<cam>s<seq>_<frame>_<box>.jpg`` (``0002_c1s1_000451_03.jpg``) or the short
    ``<pid>_c<cam>_<anything>`` form; cameras are 1-based in names, 0-based in records. pid -1 is junk and
    dropped everywhere; pid 0 is a distractor: kept in the gallery, dropped from train and query (so writers
    of this layout must number real identities from 1). ``splits`` limits what is read, e.g. ``("train",)``
    for a pre-training folder without a test split; the other splits stay empty.
    """
    return read_market_layout(dataset_root(root), name, splits)


@register_dataset("market1501")
def market1501(root) -> ReIDDataset:
    """Market-1501: the Market layout at ``root`` or in its ``Market-1501-v15.09.15/`` sub-folder
    (751 train ids / 12,936 images; 3,368 queries; 19,732 gallery images incl. junk and distractors)."""
    base = locate(dataset_root(root), "bounding_box_train", ("Market-1501-v15.09.15", "Market-1501", "market1501"))
    return read_market_layout(base, "market1501")


@register_dataset("cuhk03")
def cuhk03(root, *, variant: str = "detected") -> ReIDDataset:
    """CUHK03-NP, the 767/700 split of Zhong et al. (CVPR 2017), in Market layout.

    ``root`` (or its ``cuhk03-np/`` sub-folder) holds ``detected/`` and ``labeled/``, each with
    ``bounding_box_train/``, ``bounding_box_test/``, ``query/`` and names like ``0001_c1_1.png``
    (pid, camera 1 or 2, index). ``variant`` picks the box source: ``"detected"`` or ``"labeled"``.
    """
    choose("variant", variant, ("detected", "labeled"))
    base = locate(dataset_root(root), variant, ("cuhk03-np", "cuhk03_np", "CUHK03-NP"))
    folder = require_dir(os.path.join(base, variant), "CUHK03-NP variant folder",
                         "expected detected/ and labeled/ folders, each in the Market layout")
    return read_market_layout(folder, f"cuhk03_{variant}")
