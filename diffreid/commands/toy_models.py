"""`diffreid toy-models`: generated from the stage registry (diffreid/stages.py)."""
from diffreid.stages import STAGES, stage_command

register = stage_command(STAGES["toy_models"])
