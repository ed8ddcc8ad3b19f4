"""Sampler on the tiny pipeline: diverse prompts, per-image seeds, exact regeneration from a record."""
import numpy as np
import pytest
import torch

from diffreid.config import ConfigError
from diffreid.data.toyworld import render_identity_images, sample_identity
from diffreid.generation.adapters import AdapterConfig, load_identity_adapter, train_identity_adapter
from diffreid.generation.sampler import (SamplerConfig, diverse_prompt, image_seed, regenerate,
                                         sample_identity as sample_images)
from diffreid.models import PipelineConfig, load_pipeline


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    # this module's own loaded copy of the shared folder: a test below loads an adapter into it
    torch.set_num_threads(1)
    return load_pipeline(PipelineConfig(path=str(tiny_pipeline_dir), runtime={"device": "cpu"}))


def scfg(**fields):
    base = dict(num_images=3, steps=2, guidance=3.0, height=64, width=32, output_height=32, output_width=16,
                batch_size=2)
    return SamplerConfig.load(**{**base, **fields})


def test_config_errors():
    with pytest.raises(ConfigError, match="2:1"):
        SamplerConfig.load(height=64, width=48)
    with pytest.raises(ConfigError, match="scheduler"):
        SamplerConfig.load(scheduler="plms")
    with pytest.raises(ConfigError, match="batch_size"):
        SamplerConfig.load(batch_size=0)
    with pytest.raises(ConfigError, match="vocabulary.scene"):
        SamplerConfig.load(overrides=["vocabulary.scene=3"])


def test_seeds_and_prompts_are_deterministic_and_diverse():
    seeds = {image_seed(0, pid, i) for pid in range(5) for i in range(20)}
    assert len(seeds) == 100 and image_seed(0, 1, 2) == image_seed(0, 1, 2) != image_seed(1, 1, 2)
    vocab = SamplerConfig().vocabulary
    prompts = {diverse_prompt("a photo of sks person", s, vocab, 2) for s in seeds}
    assert len(prompts) > 30 and all(p.startswith("a photo of sks person, ") for p in prompts)
    assert all(p.count(", ") == 2 for p in prompts)
    assert diverse_prompt("x", 5, vocab, 0) == "x"


def test_provenance_regenerates_identical_images(pipe, tmp_path):
    out = sample_images(pipe, None, "a photo of sks person", 7, scfg(), start_index=10)
    assert [g.record["index"] for g in out] == [10, 11, 12]
    assert all(g.image.size == (16, 32) for g in out)
    rec = out[2].record
    for key in ("pid", "prompt", "negative_prompt", "seed", "adapter", "scheduler", "steps", "guidance", "height",
                "width", "index"):
        assert key in rec
    assert rec["pid"] == 7 and rec["seed"] == image_seed(0, 7, 12) and rec["scheduler"] == "ddim"
    assert len({g.record["seed"] for g in out}) == 3
    for g in out:
        assert np.array_equal(np.asarray(regenerate(pipe, g.record)), np.asarray(g.image))
    again = sample_images(pipe, None, "a photo of sks person", 7, scfg(scheduler="euler"), start_index=10)
    assert not np.array_equal(np.asarray(again[0].image), np.asarray(out[0].image))
    assert np.array_equal(np.asarray(regenerate(pipe, again[0].record)), np.asarray(again[0].image))


def test_adapter_images_carry_their_adapter_and_regenerate(pipe, tmp_path):
    rng = np.random.default_rng(1)
    images = render_identity_images(sample_identity(rng, 1), 3, rng, 64, 32)
    cfg = AdapterConfig.load(height=64, width=32, steps=2, lr=1e-2, prior_loss_weight=0, instance_batch_size=2)
    result = train_identity_adapter(pipe, images, "a photo of sks person", None, None, cfg, tmp_path / "a")
    load_identity_adapter(pipe, result.dir, "pid1")
    base = sample_images(pipe, None, "a photo of sks person", 1, scfg(num_images=1))
    tuned = sample_images(pipe, "pid1", "a photo of sks person", 1, scfg(num_images=1, lora_scale=1.0))
    assert tuned[0].record["adapter"] == "pid1" and tuned[0].record["adapter_mode"] == "lora"
    assert base[0].record["prompt"] == tuned[0].record["prompt"]
    assert not np.array_equal(np.asarray(base[0].image), np.asarray(tuned[0].image))
    assert np.array_equal(np.asarray(regenerate(pipe, tuned[0].record)), np.asarray(tuned[0].image))
    assert np.array_equal(np.asarray(regenerate(pipe, base[0].record)), np.asarray(base[0].image))


def test_image_to_image_starts_from_the_identitys_crops_and_regenerates(pipe, tmp_path):
    from diffreid.generation.sampler import SamplerError

    rng = np.random.default_rng(2)
    crops = []
    for i, image in enumerate(render_identity_images(sample_identity(rng, 2), 3, rng, 64, 32)):
        crops.append(str(tmp_path / f"crop{i}.png"))
        image.save(crops[-1])
    with pytest.raises(SamplerError, match="init_strength=0.5 needs init images of pid 2"):
        sample_images(pipe, None, "a photo of sks person", 2, scfg(init_strength=0.5))
    light = sample_images(pipe, None, "a photo of sks person", 2, scfg(init_strength=0.5, steps=4),
                          init_images=crops)
    assert all(g.record["init_image"] in crops and g.record["init_strength"] == 0.5 for g in light)
    for g in light:
        assert np.array_equal(np.asarray(regenerate(pipe, g.record)), np.asarray(g.image))
    # the same seeds from other crops draw other images: the output starts from the crop
    flipped = []
    for path in crops:
        from PIL import Image

        flipped.append(path.replace(".png", "-flipped.png"))
        Image.open(path).transpose(Image.FLIP_TOP_BOTTOM).save(flipped[-1])
    other = sample_images(pipe, None, "a photo of sks person", 2, scfg(init_strength=0.5, steps=4),
                          init_images=flipped)
    assert [g.record["seed"] for g in other] == [g.record["seed"] for g in light]
    assert all(not np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(light, other))
    text_only = sample_images(pipe, None, "a photo of sks person", 2, scfg(), init_images=crops)
    assert all(g.record["init_image"] is None for g in text_only)
