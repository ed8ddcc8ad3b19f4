"""Where a build's real images come from: a dataset folder or a toy world rendered into the output."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from diffreid.config import StageConfig
from diffreid.data.toyworld import ToyWorldConfig


class SourceConfig(StageConfig):
    name: str = Field("source", pattern=r"^[\w.-]+$", description="source_dataset label in the manifest and pid map")
    dataset: str = Field("market_layout", description="reader name for diffreid.data.load_dataset")
    root: str | None = Field(None, description="dataset folder; None with `toyworld` set renders one into OUT")
    reader_options: dict[str, Any] = Field(default_factory=dict, description="passed to the reader")
    toyworld: ToyWorldConfig | None = Field(None, description="render this toy world as the source")
    pids: list[int] | None = Field(None, description="only these source identities (None = all train ids)")
    max_identities: int | None = Field(None, ge=1, description="first N identities in pid order (None = all)")
    min_images: int = Field(4, ge=1, description="fewer real images cannot teach an adapter an identity")

    @model_validator(mode="after")
    def _check(self):
        if self.root is None and self.toyworld is None:
            raise ValueError("set either root (a dataset folder) or toyworld (render one)")
        return self


def source_root(src: SourceConfig, out_dir: str | Path) -> Path:
    """The source's dataset folder: ``root``, or its toy world rendered into OUT/sources/NAME (once: rendering
    an existing world with the same config is a no-op)."""
    from diffreid.data.toyworld import render_world

    if src.root:
        return Path(src.root)
    return render_world(src.toyworld, Path(out_dir) / "sources" / src.name)


def load_source(src: SourceConfig, out_dir: str | Path):
    """``(root, dataset)`` of a source, its train split without unreadable images (warned about, not fatal)."""
    from diffreid.data import load_dataset

    root = source_root(src, out_dir)
    dataset = load_dataset(src.dataset, root, **src.reader_options)
    train = [r for r in dataset.train if readable_image(r.path)]
    if len(train) < len(dataset.train):
        bad = sorted({r.path for r in dataset.train} - {r.path for r in train})
        warnings.warn(f"source {src.name}: skipped {len(bad)} unreadable or corrupt image(s), e.g. {bad[:3]}",
                      stacklevel=3)
    dataset.train = train
    return root, dataset


def readable_image(path: str) -> bool:
    """True when the file decodes as an image (corrupt or truncated files are skipped, not fatal)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # PIL raises many types for bad files: any of them means "skip this file"
        return False


def selected_identities(src: SourceConfig, dataset, root) -> tuple[dict[int, list[str]], list[dict]]:
    """The source identities a build generates for (``pids``, ``max_identities``, ``min_images`` applied):
    ({source pid: its usable train image paths}, [skipped identities with the reason])."""
    from diffreid.config import ConfigError

    sequences = dataset.identity_sequences("train")
    pids = sorted(sequences) if src.pids is None else src.pids
    unknown = sorted(set(pids) - set(sequences))
    if unknown:
        raise ConfigError(f"sources[{src.name}].pids: {unknown[:5]} are not train identities of {root}")
    if src.max_identities:
        pids = pids[:src.max_identities]
    chosen, skipped = {}, []
    for spid in pids:
        paths = [r.path for cam in sequences[spid].values() for r in cam]
        if len(paths) < src.min_images:
            skipped.append({"source": src.name, "source_pid": spid,
                            "reason": f"{len(paths)} usable images < min_images {src.min_images}"})
        else:
            chosen[spid] = paths
    return chosen, skipped
