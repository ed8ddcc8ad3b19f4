"""MSMT17 (Wei et al., CVPR 2018), releases V1 and V2, read through their list files."""
from __future__ import annotations

import os

from diffreid.data.readers._files import check_exist, choose, dataset_root, locate, read_index, require_dir
from diffreid.data.readers._registry import register_dataset
from diffreid.data.types import DatasetError, ImageRecord, ReIDDataset

MSMT_EXAMPLE = "0000/0000_000_01_0303morning_0015_0.jpg 0"
IMAGE_FOLDERS = {"v1": ("train", "test"), "v2": ("mask_train_v2", "mask_test_v2")}


def _child(base: str, name: str) -> str | None:
    """The sub-folder of ``base`` called ``name``, ignoring case (V2 archives spell it mask_train_v2 or _V2)."""
    for entry in os.listdir(base):
        if entry.lower() == name and os.path.isdir(os.path.join(base, entry)):
            return os.path.join(base, entry)
    return None


def _read_list(list_path: str, image_dir: str, check_files: bool) -> list[ImageRecord]:
    records, prefix = [], os.path.join(image_dir, "")
    for lineno, rel, pid in read_index(list_path, MSMT_EXAMPLE):
        fields = rel.rpartition("/")[2].split("_")
        if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) < 1:
            raise DatasetError(f"{list_path}:{lineno}: cannot read the camera from {rel!r}: expected MSMT17 names "
                               f"like '{MSMT_EXAMPLE.split()[0]}' (third field = camera, counted from 1)")
        records.append(ImageRecord(prefix + rel, pid, int(fields[2]) - 1, "rgb"))
    if check_files:
        check_exist((r.path for r in records), list_path)
    return records


@register_dataset("msmt17")
def msmt17(root, *, combine_val: bool = False, version: str | None = None, check_files: bool = True) -> ReIDDataset:
    """MSMT17 from its list files.

    Assumed layout (as in the official archives): ``root`` (or its ``MSMT17_V1/`` / ``MSMT17_V2/``
    sub-folder) holds ``list_train.txt``, ``list_val.txt``, ``list_query.txt``, ``list_gallery.txt`` with
    lines ``<relative path> <pid>`` (e.g. ``0000/0000_000_01_0303morning_0015_0.jpg 0``); train/val paths are
    relative to ``train/`` (V1) or ``mask_train_v2/`` (V2, faces masked), query/gallery paths to ``test/`` or
    ``mask_test_v2/``. The camera is the third ``_`` field of the name (1-based, 15 cameras). pids come from the
    list files as they are: train ids (0..1040) and test ids (0..3059) are separate namespaces, and pid 0 is a
    real person here (MSMT17 has no distractor id). ``list_val.txt`` lists further images of the training ids
    (32,621 train + val images in all); ``combine_val`` adds them to train. ``version`` ("v1"/"v2") forces the
    folder names; by default they are detected. Sequence and frame are not read (left None).
    ``check_files`` verifies every listed image exists.
    """
    base = locate(dataset_root(root), "list_train.txt", ("MSMT17_V1", "MSMT17_V2", "MSMT17", "msmt17"))
    if version is not None:
        choose("version", version, tuple(IMAGE_FOLDERS))
    candidates = [version] if version else list(IMAGE_FOLDERS)
    folders = None
    for v in candidates:
        train_dir, test_dir = (_child(base, name) for name in IMAGE_FOLDERS[v])
        if train_dir or test_dir:
            folders = v, train_dir, test_dir
            break
    if folders is None:
        wanted = " or ".join(f"{a}/ and {b}/ ({v})" for v, (a, b) in IMAGE_FOLDERS.items() if v in candidates)
        raise DatasetError(f"MSMT17 image folders not found in {base}: expected {wanted} beside list_train.txt")
    v, train_dir, test_dir = folders
    train_dir = require_dir(train_dir or os.path.join(base, IMAGE_FOLDERS[v][0]), "MSMT17 train folder",
                            f"MSMT17 {v.upper()} keeps training images there")
    test_dir = require_dir(test_dir or os.path.join(base, IMAGE_FOLDERS[v][1]), "MSMT17 test folder",
                           f"MSMT17 {v.upper()} keeps query and gallery images there")

    def split(list_name: str, image_dir: str) -> list[ImageRecord]:
        return _read_list(os.path.join(base, list_name), image_dir, check_files)

    train = split("list_train.txt", train_dir)
    if combine_val:
        train += split("list_val.txt", train_dir)
    return ReIDDataset(name="msmt17", root=base, train=train, query=split("list_query.txt", test_dir),
                       gallery=split("list_gallery.txt", test_dir))
