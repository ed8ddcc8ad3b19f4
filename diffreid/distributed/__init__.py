"""The thin Ray layer: actors, Ray Data and Ray Train glue over the Ray-free library in ``diffreid``."""
