"""Shared file handling for the readers: folder scans, Market names, index files, id lists.

Every check raises ``DatasetError`` naming the path and the expected form; a few odd image names in a
folder are skipped with one counted ``DatasetWarning``. No image is ever opened.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable

from diffreid.data.types import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
_EXTENSIONS_NO_DOT = frozenset(e[1:] for e in IMAGE_EXTENSIONS)
MARKET_EXAMPLE = "0002_c1s1_000451_03.jpg"
INDEX_EXAMPLE_FORM = "<relative image path> <integer label>"

# pid _c cam [s seq] [_frame] [_anything]; pid -1 marks junk boxes
_MARKET_NAME = re.compile(r"^(-1|\d+)_c(\d+)(?:s(\d+))?(?:_(\d+))?(?:_.*)?$")


class DatasetWarning(UserWarning):
    """Some files of a dataset folder were skipped (the message counts them and shows examples)."""


def parse_market_name(filename: str) -> tuple[int, int, int | None, int | None]:
    """``0002_c1s1_000451_03.jpg`` -> (pid 2, camid 0, seq 1, frame 451); ``0001_c1_7.png`` -> (1, 0, None, 7).

    The camera is 1-based in the name and returned 0-based. pid -1 (junk) is returned as is: callers drop it.
    """
    parsed = match_market_name(os.path.basename(filename))
    if parsed is None:
        raise DatasetError(
            f"cannot parse image name {filename!r}: expected the Market form <pid>_c<camera>[s<seq>][_<frame>]..., "
            f"e.g. {MARKET_EXAMPLE} or 0001_c1_7.png (camera counted from 1)"
        )
    return parsed


def match_market_name(name: str) -> tuple[int, int, int | None, int | None] | None:
    dot = name.rfind(".")
    m = _MARKET_NAME.match(name[:dot] if dot > 0 else name)
    if m is None:
        return None
    pid, cam, seq, frame = m.groups()
    if int(cam) < 1:
        return None
    return int(pid), int(cam) - 1, None if seq is None else int(seq), None if frame is None else int(frame)


def dataset_root(root: str | os.PathLike) -> str:
    path = os.path.abspath(os.fspath(root))
    if not os.path.isdir(path):
        raise DatasetError(f"dataset root not found: {path} (expected an existing folder)")
    return path


def locate(root: str, marker: str, subfolders: Iterable[str]) -> str:
    """``root`` if it holds ``marker``, else the first of its ``subfolders`` that does, else ``root``."""
    for candidate in (root, *(os.path.join(root, s) for s in subfolders)):
        if os.path.exists(os.path.join(candidate, marker)):
            return candidate
    return root


def require_dir(path: str, what: str, expected: str) -> str:
    if not os.path.isdir(path):
        raise DatasetError(f"{what} not found: {path} ({expected})")
    return path


def list_images(folder: str) -> list[str]:
    """Sorted image file names in ``folder`` (by extension; other files and sub-folders are ignored)."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries
                     if e.name.rpartition(".")[2].lower() in _EXTENSIONS_NO_DOT and "." in e.name and e.is_file()]
    except OSError as err:
        raise DatasetError(f"cannot read folder {folder}: {err.strerror}") from err
    names.sort()
    return names


def warn_skipped(folder: str, skipped: list[str], expected: str) -> None:
    if skipped:
        examples = ", ".join(repr(s) for s in skipped[:3])
        warnings.warn(f"{folder}: skipped {len(skipped)} image file(s) whose names do not parse "
                      f"(expected {expected}), e.g. {examples}", DatasetWarning, stacklevel=3)


def read_lines(path: str, what: str, expected: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a text file."""
    if not os.path.isfile(path):
        raise DatasetError(f"{what} not found: {path} (expected {expected})")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {what} {path}: {err} (expected a UTF-8 text file of {expected})") from err
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_index(path: str, example: str) -> list[tuple[int, str, int]]:
    """(line number, relative path, label) of an index file of ``relpath label`` lines."""
    expected = f"lines '{INDEX_EXAMPLE_FORM}', e.g. '{example}'"
    rows = []
    for lineno, line in read_lines(path, "index file", expected):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise DatasetError(f"{path}:{lineno}: malformed line {line!r}: expected {expected}")
        rows.append((lineno, parts[0].replace("\\", "/").lstrip("/"), int(parts[1])))
    if not rows:
        raise DatasetError(f"index file is empty: {path} (expected {expected})")
    return rows


def read_id_list(path: str) -> list[int]:
    """Person ids of a comma/whitespace separated list file such as SYSU-MM01 ``exp/test_id.txt``."""
    expected = "comma-separated integer ids, e.g. '1,2,4,5,7'"
    ids = []
    for lineno, line in read_lines(path, "id list", expected):
        for token in re.split(r"[,\s]+", line):
            if not token:
                continue
            if not token.isdigit():
                raise DatasetError(f"{path}:{lineno}: bad id {token!r}: expected {expected}")
            ids.append(int(token))
    if not ids:
        raise DatasetError(f"id list is empty: {path} (expected {expected})")
    return ids


def check_exist(paths: Iterable[str], index_path: str) -> None:
    """Raise if any listed image is missing; one directory listing per folder instead of a stat per file."""
    listed: dict[str, set[str]] = {}
    missing = []
    for path in paths:
        folder, _, name = path.rpartition(os.sep)
        names = listed.get(folder)
        if names is None:
            try:
                with os.scandir(folder) as entries:
                    names = listed[folder] = {e.name for e in entries}
            except OSError:
                names = listed[folder] = set()
        if name not in names:
            missing.append(path)
    if missing:
        examples = ", ".join(missing[:3])
        raise DatasetError(f"{index_path}: {len(missing)} listed image(s) do not exist, e.g. {examples} "
                           "(expected paths relative to the dataset root)")


def require_records(records: list, source: str, expected: str) -> list:
    if not records:
        raise DatasetError(f"no images found in {source} (expected {expected})")
    return records


def choose(option: str, value, allowed: Iterable) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise DatasetError(f"bad option {option}={value!r}: expected one of {', '.join(map(repr, allowed))}")
