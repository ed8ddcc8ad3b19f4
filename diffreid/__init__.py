"""diffreid: Diffusion-ReID data generation and Re-ID pre-training."""
import logging

__version__ = "0.1.0"

# transformers/diffusers import bitsandbytes when installed; its CPU backend then warns that an optional 4-bit
# kernel (not used here) cannot be fetched
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
