import dataclasses
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from diffreid.cli import main
from diffreid.config import ConfigError
from diffreid.data.toyworld import (ATTRIBUTE_VOCAB, VIEWS, Identity, ToyWorldConfig, describe, make_camera,
                                    read_attributes, render_identity_images, render_person, render_world,
                                    sample_identity)

MARKET_NAME = re.compile(r"^(\d{4})_c(\d)s1_(\d{6})_00\.jpg$")
SMALL = dict(ids_train=5, ids_test=6, cams=3, height=64, width=32, images_per_cam=(2, 4), seed=3)


def person(**changes) -> Identity:
    base = Identity(pid=1, upper_colour="red", upper_pattern="plain", pattern_colour="white", sleeve="long",
                    lower_colour="blue", lower_type="trousers", shoes_colour="black", bag_type="none",
                    bag_colour="none", hair_colour="black", hair_length="short", skin_tone="medium",
                    body_height=0.95, body_width=1.0, bag_side=1)
    return dataclasses.replace(base, **changes)


def parse_market(root: Path) -> dict[str, list[tuple[int, int, int]]]:
    out = {}
    for sub in ("bounding_box_train", "bounding_box_test", "query"):
        names = sorted(p.name for p in (root / sub).iterdir())
        parsed = [MARKET_NAME.match(n) for n in names]
        assert all(parsed), [n for n, m in zip(names, parsed) if not m][:3]
        out[sub] = [(int(m[1]), int(m[2]), int(m[3])) for m in parsed]
    return out


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    cfg = ToyWorldConfig(**SMALL)
    return cfg, render_world(cfg, tmp_path_factory.mktemp("w") / "market", progress=False)


def test_identities_are_seeded_and_use_the_vocabulary():
    a = [sample_identity(np.random.default_rng([5, i]), i) for i in range(40)]
    b = [sample_identity(np.random.default_rng([5, i]), i) for i in range(40)]
    assert a == b
    assert a != [sample_identity(np.random.default_rng([6, i]), i) for i in range(40)]
    for ident in a:
        row = ident.to_row()
        for key, options in ATTRIBUTE_VOCAB.items():
            assert row[key] in options or (key == "bag_colour" and ident.bag_type == "none"), (key, row[key])
        assert Identity.from_row(row) == ident
    # a crowd palette: colours repeat across people
    assert len({i.upper_colour for i in a}) < 12


def test_captions_name_what_each_view_shows():
    p = person(upper_pattern="logo", bag_type="backpack", bag_colour="green", hair_length="long",
               hair_colour="blonde", lower_type="skirt", lower_colour="orange", shoes_colour="white")
    assert describe(p) == ("a person with long blonde hair wearing a red shirt with a logo and an orange skirt "
                           "and white shoes, carrying a green backpack")
    assert "logo" not in describe(p, "back") and "backpack" in describe(p, "back")
    assert "backpack" not in describe(p, "front") and describe(p, "front").endswith("seen from the front")
    assert "blue striped t-shirt" in describe(person(upper_colour="blue", upper_pattern="striped", sleeve="short"))
    with pytest.raises(ValueError):
        describe(p, "top")


def test_render_person_is_deterministic_by_seed():
    ident, cam = person(), make_camera(2, seed=1)
    a = np.asarray(render_person(ident, cam, None, np.random.default_rng(0), 64, 32))
    b = np.asarray(render_person(ident, cam, None, np.random.default_rng(0), 64, 32))
    c = np.asarray(render_person(ident, cam, None, np.random.default_rng(1), 64, 32))
    assert a.shape == (64, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    for view in VIEWS:
        img = render_person(ident, 3, view, np.random.default_rng(0), 128, 64)
        assert img.size == (64, 128)
    crops = render_identity_images(ident, 5, np.random.default_rng(0), 64, 32, cams=[1, 2])
    assert len(crops) == 5 and all(im.size == (32, 64) for im in crops)


def test_person_mask_marks_the_visible_person_and_changes_no_draw():
    ident = person()
    for cam in (make_camera(2, seed=1), make_camera(5)):
        for seed in range(6):
            plain = np.asarray(render_person(ident, cam, None, np.random.default_rng(seed), 64, 32))
            image, mask = render_person(ident, cam, None, np.random.default_rng(seed), 64, 32, with_mask=True)
            assert np.array_equal(plain, np.asarray(image)), "asking for the mask changed the image"
            assert mask.shape == (64, 32) and mask.dtype == bool
            assert 0.05 < mask.mean() < 0.5, mask.mean()
            rows = np.flatnonzero(mask.any(axis=1))
            assert rows[-1] > 48 and rows[0] < 24, "the mask spans the standing person, head to feet"
    clean = make_camera(1, nuisance=0.0)
    _, mask = render_person(ident, clean, "front", np.random.default_rng(0), 64, 32, with_mask=True)
    assert not mask[:, :3].any() and not mask[:, -3:].any(), "a centred person leaves the crop edges free"


def render_pair(a: Identity, b: Identity, modality: str) -> tuple[np.ndarray, np.ndarray]:
    cam = make_camera(1, nuisance=0.0)  # a clean camera: no occluders, the two renders share every random draw
    return tuple(np.asarray(render_person(p, cam, "front", np.random.default_rng(0), 128, 64, modality),
                            dtype=np.float32) for p in (a, b))


def test_infrared_is_grey_and_shows_the_dye_reflectance_not_the_colour():
    black, orange = person(upper_colour="black"), person(upper_colour="orange")
    rgb_black, rgb_orange = render_pair(black, orange, "rgb")
    shirt = np.abs(rgb_black - rgb_orange).max(axis=2) > 30  # the pixels where the shirt colour shows
    assert shirt.sum() > 100
    assert rgb_orange[shirt].mean() > rgb_black[shirt].mean() + 40  # orange is the brighter colour
    ir_black, ir_orange = render_pair(black, orange, "ir")
    assert np.array_equal(ir_black[..., 0], ir_black[..., 1]) and np.array_equal(ir_black[..., 0], ir_black[..., 2])
    # infrared follows the dye's NIR reflectance (black 55, orange 0), so the order flips: the cue survives
    # the modality change, but only a model that learns the mapping can use it
    assert ir_black[shirt].mean() > ir_orange[shirt].mean() + 30
    again, _ = render_pair(black, orange, "ir")
    assert np.array_equal(again, ir_black), "rendering is deterministic"
    # bare legs (shorts) are warmer than covered ones (trousers)
    ir_shorts, ir_trousers = render_pair(person(lower_type="shorts"), person(lower_type="trousers"), "ir")
    legs = np.abs(ir_shorts - ir_trousers).max(axis=2) > 10
    assert legs.sum() > 20
    assert ir_shorts[legs].mean() > ir_trousers[legs].mean() + 30
    # and the person is warmer than the cool background
    assert ir_black[shirt].mean() > ir_black[:4].mean() + 40


def test_market_layout_names_counts_and_protocol(market):
    cfg, root = market
    files = parse_market(root)
    train_pids = {p for p, _, _ in files["bounding_box_train"]}
    assert train_pids == set(range(1, cfg.ids_train + 1))
    test_pids = set(range(cfg.ids_train + 1, cfg.ids_train + cfg.ids_test + 1))
    assert {p for p, _, _ in files["query"]} == test_pids == {p for p, _, _ in files["bounding_box_test"]}
    assert all(1 <= c <= cfg.cams for recs in files.values() for _, c, _ in recs)

    seqs = defaultdict(list)
    for recs in files.values():
        for pid, cam, frame in recs:
            seqs[pid, cam].append(frame)
    lo, hi = cfg.images_per_cam
    for (pid, cam), frames in seqs.items():
        frames.sort()
        assert lo <= len(frames) <= hi
        assert len(set(np.diff(frames))) == 1, (pid, cam, frames)  # one consecutive sequence per camera
    cams_of = defaultdict(set)
    for pid, cam in seqs:
        cams_of[pid].add(cam)
    assert all(len(c) >= 2 for c in cams_of.values())

    queries = defaultdict(int)
    for pid, cam, _ in files["query"]:
        queries[pid, cam] += 1
    assert set(queries) == {(p, c) for p, c in seqs if p in test_pids}
    assert set(queries.values()) == {cfg.query_per_cam}
    gallery = {(p, c) for p, c, _ in files["bounding_box_test"]}
    for pid, cam in queries:  # every query has a cross-camera match
        assert any(p == pid and c != cam for p, c in gallery)
    assert ToyWorldConfig.load(root / "toyworld.yaml") == cfg


def test_attribute_table_matches_the_identities(market):
    cfg, root = market
    table = read_attributes(root)
    assert list(table["pid"]) == list(range(1, cfg.ids_train + cfg.ids_test + 1))
    assert list(table["split"]) == ["train"] * cfg.ids_train + ["test"] * cfg.ids_test
    assert set(ATTRIBUTE_VOCAB) | {"body_height", "body_width", "caption"} <= set(table.columns)
    for row in table.to_dict("records"):
        ident = Identity.from_row(row)
        assert row["caption"] == describe(ident)
        assert 0.8 < ident.body_height <= 1.0


def test_world_is_deterministic_and_rerun_is_a_no_op(market, tmp_path):
    cfg, root = market
    again = render_world(cfg, tmp_path / "again", progress=False)
    names = sorted(p.relative_to(root) for p in root.rglob("*.jpg"))
    assert names == sorted(p.relative_to(again) for p in again.rglob("*.jpg"))
    assert all((root / n).read_bytes() == (again / n).read_bytes() for n in names)

    other = render_world(cfg.model_copy(update={"seed": cfg.seed + 1}), tmp_path / "other", progress=False)
    assert sorted(p.relative_to(other) for p in other.rglob("*.jpg")) != names

    stamp = (again / "toyworld.yaml").stat().st_mtime_ns
    assert render_world(cfg, again) == again
    assert (again / "toyworld.yaml").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different config"):
        render_world(cfg.model_copy(update={"ids_test": 2}), again)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        render_world(cfg, tmp_path / "busy")
    (tmp_path / "empty").mkdir()
    assert (render_world(cfg, tmp_path / "empty", progress=False) / "toyworld.yaml").is_file()
    assert not list(tmp_path.glob(".*.tmp"))  # no temp folders left behind


def test_offsets_give_disjoint_identities_and_other_cameras(tmp_path):
    cfg = ToyWorldConfig(**{**SMALL, "ids_train": 2, "ids_test": 2, "pid_offset": 500, "cam_offset": 10})
    files = parse_market(render_world(cfg, tmp_path / "w", progress=False))
    assert {p for recs in files.values() for p, _, _ in recs} == {501, 502, 503, 504}
    assert make_camera(11, cfg.seed) != make_camera(1, cfg.seed)


@pytest.mark.parametrize("changes, field", [
    (dict(images_per_cam=(1, 3)), "query_per_cam"),
    (dict(ir_cams=[4]), "ir_cams"),
    (dict(pid_offset=9990), "4-digit"),
    (dict(ids_val=3), "sysu"),
])
def test_bad_configs_name_the_problem(changes, field):
    with pytest.raises(ConfigError, match=field):
        ToyWorldConfig.load(**{**SMALL, **changes})


def test_sysu_layout_with_infrared_cameras(tmp_path):
    cfg = ToyWorldConfig(**{**SMALL, "cams": 6, "ir_cams": [3, 6], "layout": "sysu", "ids_val": 2})
    root = render_world(cfg, tmp_path / "sysu", progress=False)
    ids = {s: [int(x) for x in (root / "exp" / f"{s}_id.txt").read_text().strip().split(",")]
           for s in ("train", "val", "test")}
    assert ids == {"train": [1, 2, 3, 4, 5], "val": [6, 7], "test": [8, 9, 10, 11, 12, 13]}
    seen = defaultdict(set)
    for path in root.glob("cam*/*/*.jpg"):
        cam, pid, name = path.parts[-3:]
        assert re.fullmatch(r"cam[1-6]", cam) and re.fullmatch(r"\d{4}", pid) and re.fullmatch(r"\d{4}\.jpg", name)
        seen[int(pid)].add(int(cam[3:]))
    assert set(seen) == set(range(1, 14))
    for pid, cams in seen.items():  # everyone is seen in both modalities
        assert cams & {3, 6} and cams - {3, 6}, (pid, cams)
        numbers = sorted(int(p.stem) for p in (root / f"cam{min(cams)}" / f"{pid:04d}").iterdir())
        assert numbers == list(range(1, len(numbers) + 1))
    from PIL import Image

    ir = np.asarray(Image.open(next((root / "cam3").rglob("*.jpg"))), dtype=np.int16)
    rgb = np.asarray(Image.open(next((root / "cam1").rglob("*.jpg"))), dtype=np.int16)
    assert np.abs(ir[..., 0] - ir[..., 1]).max() <= 3  # grey up to JPEG rounding
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() > 30


def test_cli_writes_a_world_and_reports_bad_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["toyworld", "--out", str(out), "--ids", "3", "--cams", "3", "--seed", "2", "--size", "64x32",
               "--set", "images_per_cam=[2,3]"])
    assert rc == 0
    files = parse_market(out)
    assert {p for p, _, _ in files["bounding_box_train"]} == {1, 2, 3}
    assert {p for p, _, _ in files["query"]} == {4, 5, 6}
    assert (out / "attributes.parquet").is_file()
    cfg = ToyWorldConfig.load(out / "toyworld.yaml")
    assert (cfg.height, cfg.width, cfg.cams, cfg.seed) == (64, 32, 3, 2)
    assert main(["toyworld", "--out", str(tmp_path / "bad"), "--size", "64by32"]) == 2
    assert main(["toyworld", "--out", str(tmp_path / "bad"), "--ir-cams", "9"]) == 2
    err = capsys.readouterr().err
    assert "--size" in err and "ir_cams" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
