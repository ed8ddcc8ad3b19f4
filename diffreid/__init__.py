"""diffreid: Diffusion-ReID data generation and Re-ID pre-training."""
__version__ = "0.1.0"
