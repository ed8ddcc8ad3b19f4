"""Image transforms for Re-ID training (BoT: flip, pad+crop, random erasing) and evaluation."""
from __future__ import annotations

import random
from collections.abc import Sequence

from PIL import Image
from torchvision import transforms as T


class VisibleToInfrared:
    """VI-ReID augmentation of a visible image: with ``grey_prob`` its grey-scale version, else with
    ``channel_prob`` one random colour channel copied to all three (CAJ's channel exchange, Ye et al. 2021),
    so the model cannot rely on colours that infrared images lack."""

    def __init__(self, grey_prob: float = 0.0, channel_prob: float = 0.0):
        self.grey_prob, self.channel_prob = grey_prob, channel_prob

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() < self.grey_prob:
            return img.convert("L").convert("RGB")
        if random.random() < self.channel_prob:
            channel = img.getchannel(random.randrange(3))
            return Image.merge("RGB", (channel, channel, channel))
        return img


def train_transform(height: int, width: int, mean: Sequence[float], std: Sequence[float], *,
                    flip_prob: float = 0.5, pad: int = 10, erasing_prob: float = 0.5) -> T.Compose:
    steps = [T.Resize((height, width)), T.RandomHorizontalFlip(flip_prob)]
    if pad > 0:
        steps += [T.Pad(pad), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if erasing_prob > 0:
        # erases with 0 after normalisation, i.e. the dataset mean colour (as BoT does)
        steps.append(T.RandomErasing(p=erasing_prob, value=0))
    return T.Compose(steps)


def eval_transform(height: int, width: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    return T.Compose([T.Resize((height, width)), T.ToTensor(), T.Normalize(mean, std)])
