"""Visible-infrared datasets (the DiVE path): SYSU-MM01, RegDB, LLCM. Records carry modality "rgb" or "ir"."""
from __future__ import annotations

import os
import random
import re

from diffreid.data.readers._files import (check_exist, choose, dataset_root, list_images, locate, read_id_list,
                                          read_index, require_dir, require_records)
from diffreid.data.readers._registry import register_dataset
from diffreid.data.types import DatasetError, ImageRecord, Modality, ReIDDataset

SYSU_CAMERAS = (1, 2, 3, 4, 5, 6)
SYSU_IR_CAMERAS = (3, 6)
SYSU_GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}


def _pid_folders(cam_dir: str) -> dict[int, str]:
    """Numeric sub-folders of a camera folder: pid -> folder path."""
    with os.scandir(cam_dir) as entries:
        return {int(e.name): e.path for e in entries if e.name.isdigit() and e.is_dir()}


def _sysu_records(cam_dirs: dict[int, str], pids: set[int], cams: tuple[int, ...]) -> list[ImageRecord]:
    records = []
    for cam in cams:
        modality: Modality = "ir" if cam in SYSU_IR_CAMERAS else "rgb"
        for pid, folder in sorted(_pid_folders(cam_dirs[cam]).items()):
            if pid in pids:
                for name in list_images(folder):
                    stem = os.path.splitext(name)[0]
                    frame = int(stem) if stem.isdigit() else None
                    records.append(ImageRecord(os.path.join(folder, name), pid, cam - 1, modality, None, frame))
    return records


def _sample_shots(records: list[ImageRecord], shots: int, trial: int) -> list[ImageRecord]:
    groups: dict[tuple[int, int], list[ImageRecord]] = {}
    for r in records:
        groups.setdefault((r.pid, r.camid), []).append(r)
    rng = random.Random(trial)
    picked = []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda r: r.path)
        picked += sorted(rng.sample(group, min(shots, len(group))), key=lambda r: r.path)
    return picked


@register_dataset("sysu_mm01")
def sysu_mm01(root, *, mode: str = "all", include_val: bool = True, gallery_shots: int | None = None,
              trial: int = 0) -> ReIDDataset:
    """SYSU-MM01 (Wu et al., ICCV 2017).

    Layout: ``root`` (or its ``SYSU-MM01/`` or ``ori_data/`` sub-folder) holds ``cam1/`` .. ``cam6/``, each with
    ``<pid 4 digits>/<nnnn>.jpg``, and ``exp/train_id.txt``, ``exp/val_id.txt``, ``exp/test_id.txt`` (comma-
    separated ids). Cameras 3 and 6 are near-infrared (modality "ir"), 1, 2, 4, 5 visible; camid = camera - 1;
    the file number is the record's frame. Train = train ids (+ val ids when ``include_val``, the usual
    convention: 395 ids), all cameras. Query = test ids in the IR cameras; gallery = test ids in the RGB cameras
    of ``mode``: "all" (1, 2, 4, 5) or "indoor" (1, 2). ``gallery_shots=None`` keeps every gallery image; an
    integer N keeps N random images per (id, camera) drawn with seed ``trial`` (the official single-shot (1)
    and multi-shot (10) protocols, averaged over 10 trials). The evaluation's extra rule for SYSU (a camera-3
    query ignores camera-2 gallery images of its id) belongs to the evaluator, not to this reader.
    """
    choose("mode", mode, tuple(SYSU_GALLERY_CAMERAS))
    if gallery_shots is not None and (not isinstance(gallery_shots, int) or gallery_shots < 1):
        raise DatasetError(f"bad option gallery_shots={gallery_shots!r}: expected None (all images) or an integer >= 1")
    base = locate(dataset_root(root), "exp", ("SYSU-MM01", "ori_data"))
    exp = require_dir(os.path.join(base, "exp"), "SYSU-MM01 split folder",
                      "expected exp/train_id.txt, exp/val_id.txt and exp/test_id.txt")
    cam_dirs = {c: require_dir(os.path.join(base, f"cam{c}"), "SYSU-MM01 camera folder",
                               "expected cam1/ .. cam6/, each holding <pid 4 digits>/<nnnn>.jpg")
                for c in SYSU_CAMERAS}
    train_ids = set(read_id_list(os.path.join(exp, "train_id.txt")))
    if include_val:
        train_ids |= set(read_id_list(os.path.join(exp, "val_id.txt")))
    test_ids = set(read_id_list(os.path.join(exp, "test_id.txt")))

    expected = "images under cam<k>/<pid 4 digits>/ for the ids listed in exp/"
    train = require_records(_sysu_records(cam_dirs, train_ids, SYSU_CAMERAS), f"{base} (train ids)", expected)
    query = require_records(_sysu_records(cam_dirs, test_ids, SYSU_IR_CAMERAS), f"{base} (test ids, IR cameras)",
                            expected)
    gallery = require_records(_sysu_records(cam_dirs, test_ids, SYSU_GALLERY_CAMERAS[mode]),
                              f"{base} (test ids, RGB cameras)", expected)
    if gallery_shots is not None:
        gallery = _sample_shots(gallery, gallery_shots, trial)
    return ReIDDataset(name=f"sysu_mm01_{mode}", root=base, train=train, query=query, gallery=gallery)


def _index_records(path: str, base: str, modality: Modality, camid_of, example: str,
                   check_files: bool) -> list[ImageRecord]:
    records, prefix = [], os.path.join(base, "")
    for lineno, rel, label in read_index(path, example):
        camid, seq, frame = camid_of(rel, path, lineno)
        records.append(ImageRecord(prefix + rel, label, camid, modality, seq, frame))
    if check_files:
        check_exist((r.path for r in records), path)
    return records


REGDB_EXAMPLE = "Visible/1/female_back_v_06221_1.bmp 0"


@register_dataset("regdb")
def regdb(root, *, trial: int = 1, query_modality: str = "rgb", check_files: bool = True) -> ReIDDataset:
    """RegDB (Nguyen et al., Sensors 2017): one visible and one thermal camera, 412 ids, 10 random 206/206 trials.

    ``root`` (or its ``RegDB/`` sub-folder) holds ``idx/train_visible_{trial}.txt``, ``idx/train_thermal_{trial}.txt``,
    ``idx/test_visible_{trial}.txt``, ``idx/test_thermal_{trial}.txt`` with ``<relative path> <label>`` lines
    (e.g. ``Visible/1/female_back_v_06221_1.bmp 0``). Visible images are camid 0 / "rgb", thermal camid 1 / "ir";
    the label is the pid. Train = both train files; the test files give query (``query_modality``: "rgb" for
    visible-to-thermal, "ir" for thermal-to-visible) and gallery (the other modality).
    """
    if not isinstance(trial, int) or not 1 <= trial <= 10:
        raise DatasetError(f"bad option trial={trial!r}: expected an integer 1..10 (RegDB ships 10 trials)")
    choose("query_modality", query_modality, ("rgb", "ir"))
    base = locate(dataset_root(root), "idx", ("RegDB",))

    def read(split: str, kind: str, modality: Modality, camid: int) -> list[ImageRecord]:
        path = os.path.join(base, "idx", f"{split}_{kind}_{trial}.txt")
        return _index_records(path, base, modality, lambda *_: (camid, None, None), REGDB_EXAMPLE, check_files)

    train = read("train", "visible", "rgb", 0) + read("train", "thermal", "ir", 1)
    test = {"rgb": read("test", "visible", "rgb", 0), "ir": read("test", "thermal", "ir", 1)}
    gallery_modality = "ir" if query_modality == "rgb" else "rgb"
    return ReIDDataset(name=f"regdb_trial{trial}", root=base, train=train, query=test[query_modality],
                       gallery=test[gallery_modality])


LLCM_EXAMPLE = "nir/0001/0001_c01_s185535_f7010_nir.jpg 0"
_LLCM_NAME = re.compile(r"_c(\d+)(?:_s(\d+))?(?:_f(\d+))?(?=[_.])")
_CAM_FOLDER = re.compile(r"^cam(\d+)$")


def _llcm_camera(rel: str) -> tuple[int, int | None, int | None] | None:
    """camid (0-based), seq, frame from ``0001_c01_s185535_f7010_nir.jpg``, else camid from a ``cam<k>`` folder."""
    m = _LLCM_NAME.search(os.path.basename(rel))
    if m and int(m.group(1)) >= 1:
        return int(m.group(1)) - 1, *(None if g is None else int(g) for g in m.groups()[1:])
    for part in rel.split("/")[:-1]:
        c = _CAM_FOLDER.match(part)
        if c and int(c.group(1)) >= 1:
            return int(c.group(1)) - 1, None, None
    return None


def _llcm_index_camera(rel: str, path: str, lineno: int) -> tuple[int, int | None, int | None]:
    parsed = _llcm_camera(rel)
    if parsed is None:
        raise DatasetError(f"{path}:{lineno}: cannot read the camera from {rel!r}: expected LLCM names like "
                           f"'{LLCM_EXAMPLE.split()[0]}' (c<camera> counted from 1) or a cam<k>/ folder")
    return parsed


def _llcm_test_folders(base: str, folder: str, modality: Modality, test_ids: set[int]) -> list[ImageRecord]:
    """``test_vis/cam<k>/<pid>/*.jpg`` (the layout the LLCM authors' test code reads)."""
    records = []
    with os.scandir(folder) as entries:
        cam_dirs = sorted((e.name, e.path) for e in entries if _CAM_FOLDER.match(e.name) and e.is_dir())
    for cam_name, cam_dir in cam_dirs:
        for pid, pid_dir in sorted(_pid_folders(cam_dir).items()):
            if pid not in test_ids:
                continue
            for name in list_images(pid_dir):
                camid, seq, frame = _llcm_camera(f"{cam_name}/{name}")
                records.append(ImageRecord(os.path.join(pid_dir, name), pid, camid, modality, seq, frame))
    return require_records(records, folder, f"cam<k>/<pid 4 digits>/ folders of images for the ids in "
                                            f"{os.path.join(base, 'idx', 'test_id.txt')}")


@register_dataset("llcm")
def llcm(root, *, query_modality: str = "ir", check_files: bool = True) -> ReIDDataset:
    """LLCM (Zhang & Wang, CVPR 2023): 46,767 boxes of 1,064 ids, 9 cameras, visible (VIS) and near-infrared (NIR).

    ``root`` (or its ``LLCM/`` sub-folder) holds ``idx/train_vis.txt`` and ``idx/train_nir.txt`` with
    ``<relative path> <label>`` lines (e.g. ``nir/0001/0001_c01_s185535_f7010_nir.jpg 0``); the label is the pid.
    The test split is read from ``idx/test_vis.txt`` + ``idx/test_nir.txt`` (same form) when present, otherwise
    from the folders ``test_vis/cam<k>/<pid>/`` and ``test_nir/cam<k>/<pid>/`` for the ids of ``idx/test_id.txt``
    (what the authors' test code reads). VIS -> modality "rgb", NIR -> "ir". camid = ``c<k>`` of the name - 1
    (else the ``cam<k>`` folder), so a camera's visible and infrared images share a camid; ``s``/``f`` give seq
    and frame. Query = ``query_modality`` ("ir" is the authors' default IR-to-VIS; "rgb" for VIS-to-IR), gallery =
    the other modality.
    """
    choose("query_modality", query_modality, ("rgb", "ir"))
    base = locate(dataset_root(root), "idx", ("LLCM",))
    idx = require_dir(os.path.join(base, "idx"), "LLCM index folder",
                      "expected idx/train_vis.txt, idx/train_nir.txt and idx/test_vis.txt, idx/test_nir.txt "
                      "or idx/test_id.txt")

    def read(name: str, modality: Modality) -> list[ImageRecord]:
        return _index_records(os.path.join(idx, name), base, modality, _llcm_index_camera, LLCM_EXAMPLE, check_files)

    train = read("train_vis.txt", "rgb") + read("train_nir.txt", "ir")
    if os.path.isfile(os.path.join(idx, "test_vis.txt")) or os.path.isfile(os.path.join(idx, "test_nir.txt")):
        test = {"rgb": read("test_vis.txt", "rgb"), "ir": read("test_nir.txt", "ir")}
    elif os.path.isfile(os.path.join(idx, "test_id.txt")):
        test_ids = set(read_id_list(os.path.join(idx, "test_id.txt")))
        test = {m: _llcm_test_folders(base, require_dir(os.path.join(base, folder), "LLCM test folder",
                                                        "expected test_vis/ and test_nir/ with cam<k>/<pid>/ folders"),
                                      m, test_ids)
                for m, folder in (("rgb", "test_vis"), ("ir", "test_nir"))}
    else:
        raise DatasetError(f"LLCM test split not found in {idx}: expected test_vis.txt + test_nir.txt "
                           f"('{LLCM_EXAMPLE}' lines) or test_id.txt with test_vis/ and test_nir/ folders")
    gallery_modality = "ir" if query_modality == "rgb" else "rgb"
    return ReIDDataset(name="llcm", root=base, train=train, query=test[query_modality], gallery=test[gallery_modality])
