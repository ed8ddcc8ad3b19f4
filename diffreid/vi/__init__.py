"""DiVE: visible-infrared expansion — a modality adapter (shared LoRA + one token per identity), infrared
images for RGB-only identities, a cross-modal Re-ID filter, and output in the VI dataset's own layout
(SYSU-MM01, RegDB or LLCM).

    from diffreid.vi import VIExpandConfig, expand_vi
    result = expand_vi(VIExpandConfig.load("configs/toy-vi.yaml"), "out/vi")
    print(result.summary)
"""
from diffreid.vi.config import RayResources, ScorerConfig, VIExpandConfig
from diffreid.vi.expand import VIExpandResult, expand_vi
from diffreid.vi.layout import (ExpansionWriter, Generated, LLCMExpansionWriter, RegDBExpansionWriter,
                                SysuExpansionWriter, existing_ids, expansion_writer)
from diffreid.vi.modality import PromptMaker, TrainImage, generate, train_modality_adapter, training_images

__all__ = [
    "ExpansionWriter", "Generated", "LLCMExpansionWriter", "PromptMaker", "RayResources", "RegDBExpansionWriter",
    "ScorerConfig", "SysuExpansionWriter", "TrainImage", "VIExpandConfig", "VIExpandResult",
    "existing_ids", "expand_vi", "expansion_writer", "generate", "train_modality_adapter", "training_images",
]
