"""The domain-generalisation datasets of the META / MetaBIN protocol (paper Table 6): the extra training sources
CUHK02 and CUHK-SYSU (train only) and the small unseen targets PRID2011, GRID, VIPeR and QMUL i-LIDS, each in the
public layout torchreid reads.

Targets are reported as the mean over 10 train/test splits. ``split=k`` (0..9) picks one: GRID's official partition
(``features_and_partitions.mat``) where the folder has it, otherwise the k-th seeded random split drawn here. The
seed is derived from the dataset name and k, so a given k is the same split on every machine and every run; these
are this project's splits, not the ``splits.json`` files torchreid draws unseeded on first use.
"""
from __future__ import annotations

import os
import random
import re
from collections import defaultdict

from diffreid.data.readers._files import (choose, dataset_root, list_images, locate, require_dir, require_records,
                                          warn_skipped)
from diffreid.data.readers._registry import register_dataset
from diffreid.data.types import DatasetError, ImageRecord, ReIDDataset

NUM_SPLITS = 10


def _check_split(split) -> int:
    if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split < NUM_SPLITS:
        raise DatasetError(f"bad option split={split!r}: expected an integer 0..{NUM_SPLITS - 1} "
                           f"(the protocol's {NUM_SPLITS} train/test splits)")
    return split


def _split_rng(name: str, split: int) -> random.Random:
    """The k-th split's generator: a string seed is hashed the same way on every machine and Python run."""
    return random.Random(f"diffreid:{name}:split{split}")


def _parse_folder(folder: str, pattern: re.Pattern, expected: str) -> list[tuple[str, re.Match]]:
    """(file name, match of its stem) for the images of ``folder``; names that do not match are skipped with one
    ``DatasetWarning``; a folder where none matches raises ``DatasetError`` naming it and the expected form."""
    parsed, skipped = [], []
    for name in list_images(folder):
        m = pattern.match(os.path.splitext(name)[0])
        if m is None:
            skipped.append(name)
        else:
            parsed.append((name, m))
    warn_skipped(folder, skipped, expected)
    return require_records(parsed, folder, f"images named {expected}")


def _one_per_pid(folder: str, parsed: list[tuple[str, re.Match]], expected: str) -> dict[int, str]:
    """pid (first group) -> image path, for single-shot folders holding one image per person."""
    by_pid: dict[int, str] = {}
    for name, m in parsed:
        pid = int(m.group(1))
        if pid in by_pid:
            raise DatasetError(f"{folder}: person {pid} has two images, {os.path.basename(by_pid[pid])!r} and "
                               f"{name!r} (expected one image per person, {expected})")
        by_pid[pid] = os.path.join(folder, name)
    return by_pid


# ---------------------------------------------------------------------------------------------- VIPeR

VIPER_FORM = "cam_a/ and cam_b/ with one image per person each (e.g. cam_a/000_45.bmp), 632 + 632 in the release"


@register_dataset("viper")
def viper(root, *, split: int = 0, query_camera: str = "a") -> ReIDDataset:
    """VIPeR (Gray et al., PETS 2007): 632 people, one image in each of two outdoor cameras.

    Layout: ``root`` (or its ``VIPeR/``, ``viper/`` or ``viper/VIPeR/`` sub-folder) holds ``cam_a/`` and
    ``cam_b/`` with one image per person each (``cam_a/000_45.bmp``: a running number and the view angle). The
    two folders are paired by position in sorted name order, as every public reader pairs them, so they must
    hold the same number of images; pid = position + 1 (1..632; pid 0 would mean a distractor), camid 0 = cam_a,
    1 = cam_b. Protocol: split k draws half the people (316) at random for train (both images); the other half
    are queried from ``query_camera`` ("a": cam_a queries against a cam_b gallery, the usual direction and
    MetaBIN's ``split_Na``; "b": the reverse, torchreid's odd split ids) with the other camera as the gallery.
    """
    split = _check_split(split)
    choose("query_camera", query_camera, ("a", "b"))
    base = locate(dataset_root(root), "cam_a", ("VIPeR", "viper", os.path.join("viper", "VIPeR")))
    folders = [require_dir(os.path.join(base, f"cam_{c}"), "VIPeR camera folder", VIPER_FORM) for c in "ab"]
    images = [list_images(f) for f in folders]
    for folder, names in zip(folders, images):
        require_records(names, folder, VIPER_FORM)
    if len(images[0]) != len(images[1]):
        raise DatasetError(f"VIPeR cameras disagree: {len(images[0])} images in {folders[0]}, {len(images[1])} in "
                           f"{folders[1]} (expected {VIPER_FORM}, paired in sorted name order)")
    pids = list(range(1, len(images[0]) + 1))
    train_pids = set(_split_rng("viper", split).sample(pids, len(pids) // 2))
    per_camera = [[ImageRecord(os.path.join(folder, name), pid, camid)
                   for pid, name in zip(pids, names)] for camid, (folder, names) in enumerate(zip(folders, images))]
    train = sorted((r for cam in per_camera for r in cam if r.pid in train_pids), key=lambda r: (r.pid, r.camid))
    test = [[r for r in cam if r.pid not in train_pids] for cam in per_camera]
    q = "ab".index(query_camera)
    return ReIDDataset(name=f"viper_split{split}{query_camera}", root=base, train=train, query=test[q],
                       gallery=test[1 - q])


# ---------------------------------------------------------------------------------------------- PRID2011

PRID_SHARED = 200  # persons 1..200 are the only ones seen by both cameras
_PRID_NAME = re.compile(r"^person_(\d+)$")
PRID_FORM = "person_<4-digit id>.png, e.g. person_0001.png"


@register_dataset("prid2011")
def prid2011(root, *, split: int = 0) -> ReIDDataset:
    """PRID2011, single-shot version (Hirzer et al., SCIA 2011): camera A sees 385 people, camera B 749; persons
    1..200 are the only ones seen by both.

    Layout: ``root`` (or its ``prid_2011/``, ``prid2011/`` or ``prid2011/prid_2011/`` sub-folder) holds
    ``single_shot/cam_a/`` and ``single_shot/cam_b/`` with ``person_0001.png`` ... (one image per person and
    camera); pid = the number, camid 0 = cam_a, 1 = cam_b. Protocol (torchreid's and the DG papers'): split k
    draws 100 of the 200 shared persons at random for train (both images); query = the other 100 in cam_a;
    gallery = their cam_b images plus every cam_b-only person (201..749), identities no query matches. cam_a's
    own persons 201..385 are other people and are not used. Persons 1..200 must be present in both cameras.
    """
    split = _check_split(split)
    base = locate(dataset_root(root), "single_shot", ("prid_2011", "prid2011", os.path.join("prid2011", "prid_2011")))
    form = f"single_shot/cam_a/ and single_shot/cam_b/ with images named {PRID_FORM}"
    shot = require_dir(os.path.join(base, "single_shot"), "PRID2011 single-shot folder", form)
    cams = []
    for c in "ab":
        folder = require_dir(os.path.join(shot, f"cam_{c}"), "PRID2011 camera folder", form)
        cams.append(_one_per_pid(folder, _parse_folder(folder, _PRID_NAME, PRID_FORM), PRID_FORM))
    missing = [f"cam_{c}/person_{p:04d}.png" for c, cam in zip("ab", cams)
               for p in range(1, PRID_SHARED + 1) if p not in cam]
    if missing:
        raise DatasetError(f"{shot}: {len(missing)} image(s) of the {PRID_SHARED} persons both cameras see are "
                           f"missing, e.g. {', '.join(missing[:3])} (expected person_0001.png .. person_0200.png "
                           "in cam_a/ and cam_b/)")
    train_pids = set(_split_rng("prid2011", split).sample(range(1, PRID_SHARED + 1), PRID_SHARED // 2))
    test_pids = [p for p in range(1, PRID_SHARED + 1) if p not in train_pids]
    train = [ImageRecord(cams[c][p], p, c) for p in sorted(train_pids) for c in (0, 1)]
    query = [ImageRecord(cams[0][p], p, 0) for p in test_pids]
    gallery = [ImageRecord(cams[1][p], p, 1) for p in test_pids + sorted(p for p in cams[1] if p > PRID_SHARED)]
    return ReIDDataset(name=f"prid2011_split{split}", root=base, train=train, query=query, gallery=gallery)


# ---------------------------------------------------------------------------------------------- GRID

_GRID_NAME = re.compile(r"^(\d+)_(\d+)(?:_.*)?$")
GRID_FORM = "<pid 4 digits>_<camera 1-8>_..., e.g. 0001_1_25004_107_32_106_221.jpeg (pid 0000 = distractor)"
GRID_PARTITION = "features_and_partitions.mat"


def _grid_records(folder: str) -> list[ImageRecord]:
    records = []
    for name, m in _parse_folder(folder, _GRID_NAME, GRID_FORM):
        pid, cam = int(m.group(1)), int(m.group(2))
        if cam < 1:
            raise DatasetError(f"{os.path.join(folder, name)}: camera {cam}: expected names {GRID_FORM} "
                               "(camera counted from 1)")
        records.append(ImageRecord(os.path.join(folder, name), pid, cam - 1))
    return records


def _grid_partition(path: str, split: int) -> set[int]:
    """Training ids of the k-th official partition: the third field of the k-th struct of ``trainIdxAll``."""
    expected = "trainIdxAll, a cell of 10 structs whose third field lists that partition's 125 training ids"
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise DatasetError(f"{path}: reading GRID's official partition needs scipy (pip install scipy); "
                           f"without {GRID_PARTITION} the reader draws seeded random splits") from None
    try:
        partitions = loadmat(path)["trainIdxAll"].ravel()
        if len(partitions) < NUM_SPLITS:
            raise ValueError(f"{len(partitions)} partitions")
        ids = partitions[split][0][0][2].ravel()
        train_ids = {int(v) for v in ids}
        if not train_ids or any(v != int(v) for v in ids.tolist()):
            raise ValueError("no integer ids")
    except (MatReadError, OSError, ValueError, KeyError, IndexError, TypeError, NotImplementedError) as err:
        raise DatasetError(f"cannot read the GRID partition {path}: {err} (expected {expected})") from None
    return train_ids


@register_dataset("grid")
def grid(root, *, split: int = 0) -> ReIDDataset:
    """QMUL GRID (Loy et al., CVPR 2009): 250 people seen in two of 8 underground-station cameras, plus 775
    gallery images of other people.

    Layout: ``root`` (or its ``underground_reid/``, ``grid/underground_reid/`` or ``GRID/`` sub-folder) holds
    ``probe/`` and ``gallery/`` with names like ``0001_1_25004_107_32_106_221.jpeg`` (pid, camera 1..8, ...);
    camid = camera - 1. pid 0000 marks the gallery's distractors: kept in the gallery as pid 0 (the Market
    convention), dropped from probe/ and train. Protocol: with ``features_and_partitions.mat`` beside ``probe/``
    (the release ships it; read with scipy), split k is the official partition k: its 125 training ids go to
    train (probe and gallery images), the other 125 are queried from probe/ against all of gallery/ except the
    training ids (their images + the distractors). Without the file, split k draws half the probe ids at
    random for train instead, and the dataset is named ``grid_split<k>_random``.
    """
    split = _check_split(split)
    base = locate(dataset_root(root), "probe", ("underground_reid", os.path.join("grid", "underground_reid"),
                                                "GRID", "grid"))
    form = f"probe/ and gallery/ with images named {GRID_FORM}, and {GRID_PARTITION}"
    probe, gallery = (_grid_records(require_dir(os.path.join(base, f), f"GRID {f} folder", form))
                      for f in ("probe", "gallery"))
    probe = [r for r in probe if r.pid != 0]
    probe_ids = sorted({r.pid for r in probe})
    mat = os.path.join(base, GRID_PARTITION)
    if os.path.isfile(mat):
        train_ids, name = _grid_partition(mat, split), f"grid_split{split}"
        unknown = sorted(train_ids - set(probe_ids))
        if unknown:
            raise DatasetError(f"{mat}: partition {split} names training ids with no image in "
                               f"{os.path.join(base, 'probe')}, e.g. {unknown[:3]} (expected the ids of the "
                               f"probe/ names, {GRID_FORM})")
    else:
        train_ids = set(_split_rng("grid", split).sample(probe_ids, len(probe_ids) // 2))
        name = f"grid_split{split}_random"
    return ReIDDataset(name=name, root=base, train=[r for r in probe + gallery if r.pid in train_ids],
                       query=[r for r in probe if r.pid not in train_ids],
                       gallery=[r for r in gallery if r.pid not in train_ids])


# ---------------------------------------------------------------------------------------------- QMUL i-LIDS

_ILIDS_NAME = re.compile(r"^(\d{4})(\d{3})$")
ILIDS_FORM = "<pid 4 digits><image 3 digits>.jpg, e.g. 0001001.jpg"


@register_dataset("ilids")
def ilids(root, *, split: int = 0) -> ReIDDataset:
    """QMUL i-LIDS (Zheng et al., BMVC 2009): 476 images of 119 people in an airport arrival hall, 2 to 8 each.

    Layout: ``root`` (or its ``i-LIDS_Pedestrian/``, ``ilids/`` or ``ilids/i-LIDS_Pedestrian/`` sub-folder) holds
    ``Persons/`` with images ``PPPPNNN.jpg`` (``0001001.jpg``: person 0001, image 001). pid = PPPP; the release
    has no camera labels, so, as torchreid does, camid = NNN - 1 (each image counts as its own view and the
    Market same-camera rule never removes a true match); frame = NNN. Protocol: split k draws half the people
    (59 of 119) at random for train (all their images); for each of the other 60, one random image is the
    query and another the gallery image. Every test person needs at least 2 images.
    """
    split = _check_split(split)
    base = locate(dataset_root(root), "Persons",
                  ("i-LIDS_Pedestrian", "ilids", os.path.join("ilids", "i-LIDS_Pedestrian")))
    folder = require_dir(os.path.join(base, "Persons"), "i-LIDS image folder",
                         f"Persons/ with images named {ILIDS_FORM}")
    by_pid: dict[int, list[ImageRecord]] = defaultdict(list)
    for name, m in _parse_folder(folder, _ILIDS_NAME, ILIDS_FORM):
        pid, n = int(m.group(1)), int(m.group(2))
        if pid < 1 or n < 1:
            raise DatasetError(f"{os.path.join(folder, name)}: person and image numbers count from 1 "
                               f"(expected {ILIDS_FORM})")
        by_pid[pid].append(ImageRecord(os.path.join(folder, name), pid, n - 1, frame=n))
    pids = sorted(by_pid)
    rng = _split_rng("ilids", split)
    train_pids = set(rng.sample(pids, len(pids) // 2))
    train, query, gallery = [], [], []
    for pid in pids:
        if pid in train_pids:
            train += by_pid[pid]
            continue
        if len(by_pid[pid]) < 2:
            raise DatasetError(f"{folder}: person {pid:04d} has only {len(by_pid[pid])} image, drawn as a test "
                               f"person in split {split} (expected at least 2 images per person, {ILIDS_FORM})")
        q, g = rng.sample(by_pid[pid], 2)
        query.append(q)
        gallery.append(g)
    return ReIDDataset(name=f"ilids_split{split}", root=base, train=train, query=query, gallery=gallery)


# ---------------------------------------------------------------------------------------------- DG training sources

CUHK02_PAIRS = ("P1", "P2", "P3", "P4", "P5")
CUHK02_PID_STRIDE = 10000  # ids restart in every camera pair: pid = stride * pair + id keeps them apart
_CUHK02_NAME = re.compile(r"^(\d+)_.+$")
CUHK02_FORM = "<id>_<n>.png, e.g. 0001_1.png (torchreid reads the id before the first '_')"


@register_dataset("cuhk02")
def cuhk02(root) -> ReIDDataset:
    """CUHK02 (Li & Wang, CVPR 2013): 1,816 people in five camera pairs P1..P5 (971/306/107/193/239 people),
    two images per person and camera. A DG training source only: every image is in train and query/gallery are
    empty (META/MetaBIN train on all of CUHK02; torchreid's P1-P4 / P5 split is not offered).

    Layout: ``root`` (or its ``Dataset/`` or ``cuhk02/Dataset/`` sub-folder) holds ``P1/`` .. ``P5/``, each with
    ``cam1/`` and ``cam2/`` of images named ``<id>_<n>.png``. Ids restart in every pair, so pid = 10000 * k + id
    for pair Pk (P1's id 1 -> 10001): unique over the dataset and traceable to its file. camid = 2 * (k - 1) +
    camera - 1 (10 cameras, 0..9).
    """
    base = locate(dataset_root(root), "P1", ("Dataset", os.path.join("cuhk02", "Dataset"), "cuhk02"))
    form = f"P1/ .. P5/, each with cam1/ and cam2/ holding images named {CUHK02_FORM}"
    train = []
    for k, pair in enumerate(CUHK02_PAIRS, 1):
        pair_dir = require_dir(os.path.join(base, pair), "CUHK02 camera-pair folder", form)
        for cam in (1, 2):
            folder = require_dir(os.path.join(pair_dir, f"cam{cam}"), "CUHK02 camera folder", form)
            for name, m in _parse_folder(folder, _CUHK02_NAME, CUHK02_FORM):
                pid = CUHK02_PID_STRIDE * k + int(m.group(1))
                train.append(ImageRecord(os.path.join(folder, name), pid, 2 * (k - 1) + cam - 1))
    return ReIDDataset(name="cuhk02", root=base, train=train)


_CUHKSYSU_NAME = re.compile(r"^p(\d+)_s(\d+)(?:_.*)?$")
CUHKSYSU_FORM = "p<person>_s<scene>_<n>.jpg, e.g. p11422_s16929_1.jpg"


@register_dataset("cuhksysu")
def cuhksysu(root) -> ReIDDataset:
    """CUHK-SYSU person crops (Xiao et al., CVPR 2017): 34,574 boxes of 11,934 people cut from the person-search
    scenes. A DG training source only: every image is in train and query/gallery are empty (as torchreid and
    the DG papers use it).

    Layout (torchreid's): ``root`` (or its ``cuhksysu/`` or ``CUHK-SYSU/`` sub-folder) holds ``cropped_images/``
    with images named ``p<person>_s<scene>_<n>.jpg`` (``p11422_s16929_1.jpg``). pid = the person number; the
    crops carry no camera label, so camid is 0 for all (as torchreid); seq = the scene-image number. A
    Market-layout copy of CUHK-SYSU reads with ``market_layout`` and ``splits=("train",)`` instead.
    """
    base = locate(dataset_root(root), "cropped_images", ("cuhksysu", "CUHK-SYSU", "cuhk_sysu"))
    folder = require_dir(os.path.join(base, "cropped_images"), "CUHK-SYSU crop folder",
                         f"cropped_images/ with images named {CUHKSYSU_FORM}")
    train = [ImageRecord(os.path.join(folder, name), int(m.group(1)), 0, seq=int(m.group(2)))
             for name, m in _parse_folder(folder, _CUHKSYSU_NAME, CUHKSYSU_FORM)]
    return ReIDDataset(name="cuhksysu", root=base, train=train)
