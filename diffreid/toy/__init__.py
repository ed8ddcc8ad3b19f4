"""The toy subsystem in one place: what lets every stage run and be tested on 2 CPU cores without downloads.

- the procedural world: ``diffreid.data.toyworld`` (renderer, attributes, Market/SYSU layouts)
- the toy text-to-image base model and its recipe: ``diffreid.toy.base``
- the toy attribute captioner (LPE on the toy world): ``diffreid.generation.toy_captioner``
- tiny random SD-1.x / BLIP-2 / CLIP builders for tests: ``diffreid.models.tiny``
- the shipped models (``diffreid:toy-base``, ``diffreid:toy-captioner``): ``diffreid.models.assets``
- ``train_toy_models``: re-trains the shipped models (``make toy-models``)

This package imports the rest of diffreid; nothing else imports it (the world, captioner and tiny builders stay
where the stages that read them live, so no subpackage depends on ``toy``).
"""
from diffreid.toy.models import ToyModelsConfig, train_toy_models

__all__ = ["ToyModelsConfig", "train_toy_models"]
