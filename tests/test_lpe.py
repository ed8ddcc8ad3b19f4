"""LPE (captioners, merge, identity prompts, caption cache) and the DI attribute reference set."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffreid.config import ConfigError
from diffreid.data.types import ImageRecord
from diffreid.generation.captioners import Blip2Captioner, CaptionerError, TemplateCaptioner, build_tiny_blip2
from diffreid.generation.prompts import (
    LPEConfig,
    build_captioner,
    caption_identity,
    make_identity_prompts,
    merge_captions,
    prompts_from_config,
    caption_images,
    identity_images,
    sequence_images,
)
from diffreid.generation.refset import RefSetConfig, generate_reference_set, reference_set_dir
from diffreid.models import PipelineConfig, load_pipeline

torch.set_num_threads(2)


class CountingCaptioner(TemplateCaptioner):
    def __init__(self, template="a person walking"):
        super().__init__(template)
        self.images_seen = 0

    def caption(self, images):
        self.images_seen += len(images)
        return super().caption(images)


def crops(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir):
    # this module's own loaded copy of the shared folder: a test below adds and deletes a LoRA on it
    return load_pipeline(PipelineConfig(path=str(tiny_pipeline_dir), runtime={"device": "auto"}))


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    return build_tiny_blip2(tmp_path_factory.mktemp("lpe") / "tiny-blip2", seed=0)


def test_merge_keeps_the_most_frequent_phrases_in_first_seen_order():
    captions = [
        "a man wearing a red shirt, carrying a black bag",
        "A man wearing a red shirt and blue jeans",
        "man wearing a  red shirt, walking",
        "carrying a black bag. walking",
    ]
    assert merge_captions(captions, max_phrases=3) == "a man wearing a red shirt, carrying a black bag, walking"
    assert merge_captions(captions, max_phrases=1) == "a man wearing a red shirt"
    assert merge_captions(captions, max_phrases=10) == \
        "a man wearing a red shirt, carrying a black bag, blue jeans, walking"
    # repeating a phrase inside one caption does not outvote other captions
    assert merge_captions(["x, x, x", "y", "y"], max_phrases=1) == "y"
    assert merge_captions(["", " , "]) == ""
    with pytest.raises(ValueError):
        merge_captions(["a"], max_phrases=0)


def test_identity_prompt_has_the_token_and_the_reference_prompt_does_not():
    p = make_identity_prompts("red shirt,  black bag", token="xjq")
    assert p.identity == "a photo of xjq person, red shirt, black bag"
    assert p.reference == "a photo of person, red shirt, black bag"
    assert "xjq" not in p.reference
    assert make_identity_prompts("").identity == "a photo of sks person"
    with pytest.raises(ValueError, match="token"):
        make_identity_prompts("x", template="a photo of person, {caption}")
    with pytest.raises(ValueError, match="no \\{token\\}"):
        make_identity_prompts("x", class_template="{token} {caption}")


def test_lpe_config_validates_and_builds_captioners():
    cfg = LPEConfig.load(overrides=["token=zwv", "template_caption=a person standing"])
    assert prompts_from_config("blue coat", cfg).identity == "a photo of zwv person, blue coat"
    assert build_captioner(cfg).caption(crops(2)) == ["a person standing"] * 2
    with pytest.raises(ConfigError, match="token"):
        LPEConfig.load(overrides=["token=two words"])
    with pytest.raises(ConfigError, match="reference_template"):
        LPEConfig.load(overrides=["reference_template='{token} {caption}'"])
    with pytest.raises(ConfigError, match="model_path"):
        LPEConfig.load(overrides=["captioner=blip2"])
    with pytest.raises(ConfigError, match="diffreid:toy-captioner"):
        build_captioner(LPEConfig(captioner="toy", model_path="diffreid:no-such-model"))


def test_caption_cache_is_reused_per_identity(tmp_path):
    paths = []
    for i, im in enumerate(crops(3)):
        paths.append(tmp_path / f"0001_c1s1_{i:06d}_00.png")
        im.save(paths[-1])
    captioner = CountingCaptioner("a person walking, red shirt")
    cache = tmp_path / "captions"
    assert caption_identity(captioner, paths, cache, 1) == "a person walking, red shirt"
    assert captioner.images_seen == 3
    assert caption_identity(captioner, paths, cache, 1) == "a person walking, red shirt"
    assert captioner.images_seen == 3, "a re-run must not re-caption"
    stored = json.loads((cache / "1.json").read_text())
    assert stored["captions"] == ["a person walking, red shirt"] * 3

    # another identity, other images, or another captioner: captioned again
    caption_identity(captioner, crops(2), cache, 2)
    assert captioner.images_seen == 5
    caption_identity(captioner, paths[:2], cache, 1)
    assert captioner.images_seen == 7
    other = CountingCaptioner("a person standing")
    assert caption_identity(other, paths[:2], cache, 1) == "a person standing"
    assert other.images_seen == 2
    with pytest.raises(ValueError, match="pid"):
        caption_identity(captioner, paths, cache, "../x")
    with pytest.raises(ValueError, match="no images"):
        caption_identity(captioner, [], cache, 3)


def test_sequence_images_takes_the_longest_camera_sequence_thinned():
    recs = {cam: [ImageRecord(f"{cam}_{i}.jpg", 7, cam, frame=i) for i in range(n)]
            for cam, n in ((0, 3), (1, 10), (2, 10))}
    picked = sequence_images(recs, 4)
    assert [r.camid for r in picked] == [1] * 4
    assert [r.frame for r in picked] == [0, 2, 5, 7]
    assert sequence_images({0: recs[0]}, 8) == recs[0]
    assert sequence_images({}, 4) == []


def test_tiny_blip2_captions_and_merges(tiny_blip2, tmp_path):
    captioner = build_captioner(LPEConfig(captioner="blip2", model_path=str(tiny_blip2), max_new_tokens=6))
    assert isinstance(captioner, Blip2Captioner)
    captions = captioner.caption(crops(3))
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert captioner.caption(crops(3)) == captions, "greedy decoding is deterministic"
    merged = caption_identity(captioner, crops(3), tmp_path, "p1", max_phrases=4)
    assert merged == merge_captions(captions, 4)
    assert json.loads((tmp_path / "p1.json").read_text())["key"]["captioner"].startswith("blip2:")
    assert build_tiny_blip2(tiny_blip2) == tiny_blip2


def test_blip2_captioner_errors_name_the_path(tmp_path):
    with pytest.raises(CaptionerError, match="does not exist"):
        Blip2Captioner(tmp_path / "missing")
    with pytest.raises(CaptionerError, match="config.json"):
        Blip2Captioner(tmp_path)


def refset_cfg(**kw):
    return RefSetConfig(**{"num_images": 5, "steps": 2, "height": 64, "width": 32, "batch_size": 2, **kw})


def test_reference_set_generates_caches_and_resumes(tiny_pipe, tmp_path):
    prompts = [make_identity_prompts("red shirt").reference, make_identity_prompts("black bag").reference]
    cfg = refset_cfg(seed=10)
    out = reference_set_dir(tmp_path, cfg, pid=3)
    assert out == tmp_path / "shared"
    paths = generate_reference_set(tiny_pipe, prompts, cfg, out)
    assert len(paths) == 5 and all(p.suffix == ".png" for p in paths)
    assert Image.open(paths[0]).size == (32, 64)
    manifest = json.loads((out / "refset.json").read_text())
    assert manifest["complete"] is True
    assert [it["seed"] for it in manifest["images"]] == [10, 11, 12, 13, 14]
    assert [it["prompt"] for it in manifest["images"]][:3] == [prompts[0], prompts[1], prompts[0]]
    assert all("sks" not in it["prompt"] for it in manifest["images"])

    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    assert generate_reference_set(tiny_pipe, prompts, cfg, out) == paths
    assert {p: p.stat().st_mtime_ns for p in paths} == mtimes, "a complete set is reused"

    # a lost image is redrawn from its recorded seed alone, identical to the batched original
    original = np.asarray(Image.open(paths[3]), dtype=np.int16)
    paths[3].unlink()
    generate_reference_set(tiny_pipe, prompts, cfg, out)
    assert np.abs(np.asarray(Image.open(paths[3]), dtype=np.int16) - original).max() <= 1
    assert paths[0].stat().st_mtime_ns == mtimes[paths[0]]

    with pytest.raises(ValueError, match="other prompts or settings"):
        generate_reference_set(tiny_pipe, prompts[:1], cfg, out)
    assert reference_set_dir(tmp_path, refset_cfg(share_across_identities=False), pid=3) == tmp_path / "3"


def test_reference_set_rejects_bad_sizes_and_prompts(tiny_pipe, tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        generate_reference_set(tiny_pipe, ["a person"], refset_cfg(height=63), tmp_path)
    with pytest.raises(ValueError, match="prompt"):
        generate_reference_set(tiny_pipe, [], refset_cfg(), tmp_path)
    with pytest.raises(ConfigError, match="num_images"):
        RefSetConfig.load(overrides=["num_images=0"])


def test_reference_set_needs_the_base_model(tiny_pipe, tmp_path):
    from peft import LoraConfig

    tiny_pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"]), adapter_name="id7")
    try:
        with pytest.raises(ValueError, match="id7"):
            generate_reference_set(tiny_pipe, ["a photo of person"], refset_cfg(num_images=1), tmp_path)
        tiny_pipe.disable_lora()
        assert len(generate_reference_set(tiny_pipe, ["a photo of person"], refset_cfg(num_images=1), tmp_path)) == 1
    finally:
        tiny_pipe.unet.delete_adapters("id7")


def test_identity_images_spread_over_every_camera():
    recs = {cam: [ImageRecord(f"{cam}_{i}.jpg", 7, cam, frame=i) for i in range(n)]
            for cam, n in ((2, 1), (0, 3), (1, 10))}
    picked = identity_images(recs, 5)
    assert [r.camid for r in picked] == [0, 1, 2, 0, 1]
    assert len({r.path for r in picked}) == 5
    assert len(identity_images(recs, 100)) == 14, "asking for more than exist returns each record once"
    assert caption_images(recs, LPEConfig(caption_scope="identity", max_images=3)) == identity_images(recs, 3)
    assert caption_images(recs, LPEConfig(max_images=3)) == sequence_images(recs, 3)
