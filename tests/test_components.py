"""The shared component checks (tests/testers.py) applied to each kind of saved, seeded component:
the Re-ID backbone, the identity LoRA in a diffusion pipeline, and the toy attribute captioner."""
import shutil

import numpy as np
import pytest
import torch

from diffreid.data.toyworld import render_identity_images, sample_identity
from testers import ComponentTester


def toy_crops(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [im for pid in range(n) for im in render_identity_images(sample_identity(rng, pid), 1, rng, 64, 32)]


class TestReIDBackbone(ComponentTester):
    """A timm backbone + BoT head: safetensors + reid_model.json, L2-normalised features."""

    def inputs(self):
        return toy_crops(4)

    def config(self):
        from diffreid.reid.model import ReIDModelConfig

        return ReIDModelConfig(backbone="resnet18")

    def make(self, seed, workdir):
        from diffreid.reid.model import build_reid_model

        torch.manual_seed(seed)
        return build_reid_model(self.config(), num_classes=3, input_size=(64, 32)).eval()

    def reload(self, component, workdir):
        from diffreid.reid.model import load_reid_model, save_reid_model

        return load_reid_model(save_reid_model(component, self.config(), workdir))

    def outputs(self, component, inputs, batch_size):
        from diffreid.reid.features import extract_features

        return extract_features(component, inputs, batch_size=batch_size)


class TestIdentityLora(ComponentTester):
    """An identity LoRA trained by diffreid, resident in its pipeline vs loaded by stock diffusers from the
    safetensors it wrote; outputs are seeded samples of the identity prompt."""

    prompt = "a photo of sks person"
    batch_tolerance = 1e-4  # images in [0, 1]; a batched UNet call sums in another order

    @pytest.fixture(autouse=True)
    def _pipeline(self, tiny_pipeline_dir):
        from diffreid.models import PipelineConfig, load_pipeline

        self.pipe_dir = tiny_pipeline_dir
        self.pipe = load_pipeline(PipelineConfig(path=str(tiny_pipeline_dir), runtime={"device": "cpu"}))

    def inputs(self):
        return [0, 1, 2]  # sample seeds

    def make(self, seed, workdir):
        from diffreid.generation.adapters import (AdapterConfig, activate, load_identity_adapter,
                                                  train_identity_adapter)

        cfg = AdapterConfig.load(height=64, width=32, instance_batch_size=2, prior_batch_size=2, steps=3, lr=1e-2,
                                 runtime={"device": "cpu", "seed": seed})
        people = toy_crops(2, seed=5)
        name = f"id-{seed}-{workdir.name}"
        train_identity_adapter(self.pipe, people[:1] * 2, self.prompt, people[1:], "a photo of person", cfg,
                               workdir, name)
        self.folder = workdir
        load_identity_adapter(self.pipe, workdir, name)
        activate(self.pipe, name)
        return self.pipe

    def reload(self, component, workdir):
        from diffusers import StableDiffusionPipeline

        shutil.copytree(self.folder, workdir)
        stock = StableDiffusionPipeline.from_pretrained(self.pipe_dir, safety_checker=None,
                                                        requires_safety_checker=False)
        stock.set_progress_bar_config(disable=True)
        stock.load_lora_weights(workdir, adapter_name="reloaded")
        return stock

    def outputs(self, component, inputs, batch_size):
        images = []
        for i in range(0, len(inputs), batch_size):
            seeds = inputs[i:i + batch_size]
            images.append(component([self.prompt] * len(seeds), num_inference_steps=2, height=64, width=32,
                                    output_type="np",
                                    generator=[torch.Generator().manual_seed(s) for s in seeds]).images)
        return np.concatenate(images)


class TestToyCaptioner(ComponentTester):
    """The toy attribute CNN: model.safetensors + config.json; outputs are every head's probabilities."""

    def inputs(self):
        return toy_crops(4, seed=3)

    def make(self, seed, workdir):
        from diffreid.generation.toy_captioner import ToyCaptioner, ToyCaptionerTrainConfig, train_toy_captioner
        from diffreid.toy.base import ToyPoolConfig, render_pool

        images, owners, views = render_pool(ToyPoolConfig(ids=6, images_per_id=2), progress=False)
        cfg = ToyCaptionerTrainConfig(steps=3, batch=8, width=8, seed=seed, val_fraction=0.2)
        train_toy_captioner(cfg, images, owners, views, workdir)
        return ToyCaptioner(workdir)

    def reload(self, component, workdir):
        from diffreid.generation.toy_captioner import ToyCaptioner

        return ToyCaptioner(shutil.copytree(component.cache_key.removeprefix("toy:"), workdir))

    def outputs(self, component, inputs, batch_size):
        from diffreid.generation.toy_captioner import to_input

        probs = []
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                out = component.net(to_input(inputs[i:i + batch_size], component.device))
                probs.append(torch.cat([out[k].softmax(1) for k in sorted(out)], dim=1).numpy())
        return np.concatenate(probs)
