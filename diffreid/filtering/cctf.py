"""Classification confidence threshold filter (CCTF): P(claimed id) from an identity classifier.

The classifier is a linear softmax head (multinomial logistic regression, L-BFGS, light L2) trained on
frozen, L2-normalised features of the source images. Chosen over reusing the Re-ID model's own classifier
head because it (1) works for any feature extractor — a Re-ID model trained without ID loss, a
pre-trained backbone, a generic image classifier — (2) owns its pid order (saved beside the weights) so
no class-index mapping from training has to be trusted, and (3) trains in seconds on the features the
FAISS gallery already holds, with no second pass over the images.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from diffreid.filtering.base import FilterError, FilterScores, check_batch
from diffreid.filtering.gallery import check_features, l2_normalise, replace_folder

WEIGHTS_NAME = "classifier.safetensors"
META_NAME = "classifier.json"


class IdentityClassifier:
    """logits = features @ weight.T + bias over ``pids`` (sorted source pids)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, pids: np.ndarray, meta: dict | None = None):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.pids = np.asarray(pids, dtype=np.int64)
        self.meta = meta or {}
        self.column = {int(p): i for i, p in enumerate(self.pids)}

    @classmethod
    def fit(cls, features: np.ndarray, pids: Sequence[int], *, weight_decay: float = 1e-4, steps: int = 100,
            device=None, seed: int = 0, fingerprint: str = "") -> "IdentityClassifier":
        import torch

        features = check_features(features)
        labels_np = np.asarray(pids, dtype=np.int64)
        if labels_np.shape != (features.shape[0],):
            raise FilterError(f"pids: expected {features.shape[0]} labels, got shape {labels_np.shape}")
        classes, labels_np = np.unique(labels_np, return_inverse=True)
        if len(classes) < 2:
            raise FilterError("CCTF needs at least 2 source identities to train a classifier")
        device = torch.device(device or "cpu")
        torch.manual_seed(seed)
        x = torch.from_numpy(features).to(device)
        y = torch.from_numpy(labels_np).to(device)
        weight = torch.zeros(len(classes), x.shape[1], device=device, requires_grad=True)
        bias = torch.zeros(len(classes), device=device, requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + weight_decay * weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            final_loss = float(torch.nn.functional.cross_entropy(x @ weight.T + bias, y))
        meta = {"weight_decay": weight_decay, "steps": steps, "train_images": int(features.shape[0]),
                "final_loss": final_loss, "fingerprint": fingerprint}
        return cls(weight.detach().cpu().numpy(), bias.detach().cpu().numpy(), classes, meta)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        logits = l2_normalise(features) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        out = Path(folder)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            save_file({"weight": self.weight, "bias": self.bias, "pids": self.pids}, str(tmp / WEIGHTS_NAME))
            (tmp / META_NAME).write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
            replace_folder(tmp, out, META_NAME)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "IdentityClassifier":
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / WEIGHTS_NAME).is_file() or not (folder / META_NAME).is_file():
            raise FilterError(f"{folder}: not a CCTF classifier folder (expected {WEIGHTS_NAME} and {META_NAME})")
        tensors = load_file(str(folder / WEIGHTS_NAME))
        return cls(tensors["weight"], tensors["bias"], tensors["pids"], json.loads((folder / META_NAME).read_text()))


def fit_or_load_classifier(folder: str | Path, features: np.ndarray, pids: Sequence[int], *, fingerprint: str,
                           **fit_kwargs) -> IdentityClassifier:
    """The classifier saved in ``folder`` when trained on the same features (``fingerprint``), else fit + save."""
    folder = Path(folder)
    if (folder / META_NAME).is_file():
        saved = IdentityClassifier.load(folder)
        if saved.meta.get("fingerprint") == fingerprint:
            return saved
    clf = IdentityClassifier.fit(features, pids, fingerprint=fingerprint, **fit_kwargs)
    clf.save(folder)
    return clf


class CCTF:
    name = "cctf"

    def __init__(self, extract: Callable[[list], np.ndarray], classifier: IdentityClassifier, *,
                 threshold: float = 0.5):
        self.extract = extract
        self.classifier = classifier
        self.threshold = float(threshold)

    def score(self, images: Sequence[Image.Image], claimed_pids: Sequence[int]) -> FilterScores:
        pids = check_batch(images, claimed_pids)
        unknown = sorted({int(p) for p in pids if int(p) not in self.classifier.column})
        if unknown:
            raise FilterError(f"claimed pids {unknown[:10]} are not classes of the CCTF classifier "
                              f"({len(self.classifier.pids)} source identities)")
        if len(pids) == 0:
            return FilterScores.from_scores(np.zeros(0, np.float32), self.threshold,
                                            {"top_pid": np.zeros(0, np.int64)})
        probs = self.classifier.predict_proba(self.extract(list(images)))
        columns = np.array([self.classifier.column[int(p)] for p in pids])
        claimed = probs[np.arange(len(pids)), columns]
        top_pid = self.classifier.pids[probs.argmax(axis=1)]
        return FilterScores.from_scores(claimed, self.threshold, {"top_pid": top_pid})
