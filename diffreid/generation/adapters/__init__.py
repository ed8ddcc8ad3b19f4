"""Identity adapters, three modes behind one interface: per-ID LoRA (default), per-ID DreamBooth (the paper's
full fine-tune), and DiVE's shared LoRA + one learned token per identity."""
from diffreid.generation.adapters.config import MODE_DEFAULTS, AdapterConfig, check_person_aspect, check_resolution
from diffreid.generation.adapters.loss import prior_preservation_loss, timestep_weights, training_target
from diffreid.generation.adapters.store import (AdapterError, LoadedAdapter, activate, active_adapter, deactivate,
                                                delete_adapter, load_identity_adapter, loaded_adapters,
                                                read_adapter_meta)
from diffreid.generation.adapters.train import (AdapterResult, train_identity_adapter, train_shared_lora_ti,
                                                train_shared_lora_ti_per_image)

__all__ = [
    "MODE_DEFAULTS", "AdapterConfig", "AdapterError", "AdapterResult", "LoadedAdapter", "activate",
    "active_adapter", "check_person_aspect", "check_resolution", "deactivate", "delete_adapter",
    "load_identity_adapter", "loaded_adapters", "prior_preservation_loss", "read_adapter_meta",
    "timestep_weights", "train_identity_adapter", "train_shared_lora_ti", "train_shared_lora_ti_per_image",
    "training_target",
]
