"""`diffreid train`: BoT-style Re-ID training on a Market-layout folder, then evaluation on its query/gallery
(generated from the stage registry, diffreid/stages.py)."""
from diffreid.stages import STAGES, stage_command

register = stage_command(STAGES["train"])
