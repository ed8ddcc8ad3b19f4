"""Image transforms for Re-ID training (BoT: flip, pad+crop, random erasing) and evaluation."""
from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T


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
