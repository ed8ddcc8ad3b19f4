"""Base models: the tiny offline SD pipeline factory and the loader (real diffusers, CPU, 2 steps)."""
import json

import numpy as np
import pytest
import torch

from diffreid.cli import main
from diffreid.config import ConfigError, RuntimeConfig
from diffreid.models import PipelineConfig, PipelineLoadError, load_pipeline
from diffreid.models.tiny import TINY_CONFIG, build_tiny_pipeline

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_dir(tiny_pipeline_dir):
    return tiny_pipeline_dir


def unet_from_tiny_config(sample_size):
    """The UNet ``TINY_CONFIG`` describes, built here from the config alone (not through ``build_tiny_pipeline``),
    with shapes only (meta device: no weights are allocated or initialised)."""
    from diffusers import UNet2DConditionModel

    c = TINY_CONFIG
    with torch.device("meta"):
        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=c["latent_channels"], out_channels=c["latent_channels"],
            block_out_channels=c["unet_block_out_channels"], layers_per_block=c["unet_layers_per_block"],
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=c["cross_attention_dim"], attention_head_dim=c["attention_head_dim"],
            norm_num_groups=32)


def generate(pipe, seed=0, steps=2):
    return pipe("a photo of sks person, red shirt", num_inference_steps=steps, height=64, width=32,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images


def test_tiny_pipeline_is_saved_in_diffusers_layout(tiny_dir):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_dir / part).is_dir(), part
        assert part in index
    for part in ("unet", "vae", "text_encoder"):
        assert list((tiny_dir / part).glob("*.safetensors")), part
        assert not list((tiny_dir / part).glob("*.bin")), part
    assert (tiny_dir / "scheduler" / "scheduler_config.json").is_file()


def test_tiny_pipeline_build_is_idempotent_and_refuses_other_settings(tiny_dir):
    weights = tiny_dir / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_pipeline(tiny_dir, seed=0) == tiny_dir
    assert weights.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="other settings"):
        build_tiny_pipeline(tiny_dir, seed=1)


def test_build_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a complete diffusers pipeline folder"):
        build_tiny_pipeline(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_load_pipeline_and_stock_from_pretrained_agree(tiny_dir):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = load_pipeline(PipelineConfig(path=str(tiny_dir), runtime=RuntimeConfig(device="auto")))
    assert pipe.device == RuntimeConfig(device="auto").torch_device()
    assert pipe.safety_checker is None
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.vae_scale_factor == TINY_CONFIG["vae_scale_factor"]
    # the saved UNet is exactly the one TINY_CONFIG describes: every parameter, its shape, so its size
    reference = unet_from_tiny_config(pipe.unet.config.sample_size)
    shapes = {name: tuple(p.shape) for name, p in pipe.unet.named_parameters()}
    assert shapes == {name: tuple(p.shape) for name, p in reference.named_parameters()}
    assert sum(p.numel() for p in pipe.unet.parameters()) == sum(p.numel() for p in reference.parameters())
    assert pipe.unet.config.block_out_channels == list(TINY_CONFIG["unet_block_out_channels"])
    assert pipe.unet.config.cross_attention_dim == TINY_CONFIG["cross_attention_dim"]
    assert pipe.text_encoder.config.hidden_size == TINY_CONFIG["text_hidden_size"]
    ours = generate(pipe)
    assert ours.shape == (1, 64, 32, 3)
    assert np.isfinite(ours).all() and ours.std() > 0.01

    stock = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True).to(pipe.device)
    np.testing.assert_allclose(generate(stock), ours, atol=1e-5)
    assert not np.allclose(generate(pipe, seed=1), ours, atol=1e-3)


def test_tokenizer_keeps_identity_tokens_whole(tiny_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_dir / "tokenizer", local_files_only=True)
    for word in ("sks", "person", "photo"):
        assert tok.tokenize(word) == [f"{word}</w>"]
    ids = tok("a photo of sks person").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 7
    # words outside the vocab fall back to bytes, deterministically
    assert tok.tokenize("zebra") == tok.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]


def test_dtype_and_scheduler_come_from_config(tiny_dir):
    from diffusers import EulerDiscreteScheduler

    pipe = load_pipeline(PipelineConfig(path=str(tiny_dir), scheduler="euler",
                                        runtime=RuntimeConfig(device="cpu", dtype="bf16")))
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert np.isfinite(generate(pipe)).all()
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        load_pipeline(PipelineConfig(path=str(tiny_dir), runtime=RuntimeConfig(device="cpu", dtype="fp16")))
    with pytest.raises(ConfigError, match="scheduler"):
        PipelineConfig.load(overrides=["scheduler=heun"])


def test_every_named_scheduler_samples(tiny_dir):
    from diffreid.models import SCHEDULERS, make_scheduler

    pipe = load_pipeline(PipelineConfig(path=str(tiny_dir)))
    base = pipe.scheduler.config
    for name, cls in SCHEDULERS.items():
        pipe.scheduler = make_scheduler(name, base)
        assert type(pipe.scheduler).__name__ == cls
        assert np.isfinite(generate(pipe)).all(), name
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("heun", base)


def test_clear_errors_for_paths_that_are_not_pipelines(tmp_path, tiny_dir):
    with pytest.raises(PipelineLoadError, match="does not exist"):
        load_pipeline(PipelineConfig(path=str(tmp_path / "missing")))
    with pytest.raises(PipelineLoadError, match="model_index.json"):
        load_pipeline(PipelineConfig(path=str(tmp_path)))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(PipelineLoadError, match="StableDiffusionXLPipeline"):
        load_pipeline(PipelineConfig(path=str(tmp_path)))
    with pytest.raises(PipelineLoadError, match="is a file"):
        load_pipeline(PipelineConfig(path=str(tiny_dir / "model_index.json")))
    with pytest.raises(PipelineLoadError, match="empty"):
        load_pipeline(PipelineConfig())
    assert issubclass(PipelineLoadError, ValueError)


def test_hub_id_that_is_not_cached_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineLoadError, match="not a local folder.*offline"):
        load_pipeline(PipelineConfig(path="diffreid-test/no-such-model", local_files_only=True))


def test_cli_models_tiny(tmp_path, capsys):
    out = tmp_path / "cli-tiny"
    assert main(["models", "tiny", "--out", str(out), "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert json.loads((out / "diffreid_tiny.json").read_text())["seed"] == 3
    assert main(["models", "tiny", "--out", str(out), "--seed", "4"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["models", "tiny", "--out", str(tmp_path / "odd"), "--height", "63"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_sd15_shaped_architecture_and_clip_vocabulary(tmp_path):
    """The random SD-1.5 stand-in has SD-1.5's sizes (built on the meta device: no memory) and CLIP's own
    tokenizer (ids as in the released model, e.g. `sks` = 48136)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffreid.models.random import SD15, clip_bpe_file, write_clip_tokenizer

    with torch.device("meta"):
        sizes = {name: sum(p.numel() for p in model.parameters()) for name, model in (
            ("unet", UNet2DConditionModel(**SD15["unet"])), ("vae", AutoencoderKL(**SD15["vae"])),
            ("text", CLIPTextModel(CLIPTextConfig(**SD15["text"]))))}
    assert round(sizes["unet"] / 1e6) == 860 and round(sizes["vae"] / 1e6) == 84 and round(sizes["text"] / 1e6) == 123
    tokenizer = write_clip_tokenizer(clip_bpe_file(), tmp_path / "tok")
    assert len(tokenizer) == SD15["text"]["vocab_size"] == 49408
    assert tokenizer("a photo of sks person").input_ids == [49406, 320, 1125, 539, 48136, 2533, 49407]
