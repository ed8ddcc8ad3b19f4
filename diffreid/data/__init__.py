"""Re-ID data: one record type, one dataset type, and readers for the usual datasets.

    from diffreid.data import load_dataset
    ds = load_dataset("market1501", "/data/Market-1501-v15.09.15")
    print(ds.summary())
"""
from diffreid.data.readers import (IMAGE_EXTENSIONS, DatasetWarning, available_datasets, load_dataset,
                                   parse_market_name, register_dataset)
from diffreid.data.types import DatasetError, ImageRecord, Modality, ReIDDataset, relabel

__all__ = [
    "IMAGE_EXTENSIONS", "DatasetError", "DatasetWarning", "ImageRecord", "Modality", "ReIDDataset",
    "available_datasets", "load_dataset", "parse_market_name", "register_dataset", "relabel",
]
