"""Re-ID models, training and evaluation (metrics live in `diffreid.reid.metrics`)."""
