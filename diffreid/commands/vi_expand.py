"""`diffreid vi-expand`: generated from the stage registry (diffreid/stages.py)."""
from diffreid.stages import STAGES, stage_command

register = stage_command(STAGES["vi_expand"])
