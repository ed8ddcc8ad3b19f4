"""Re-ID dataset readers. ``load_dataset(name, root, **options)`` picks one from the registry by name;
importing the reader modules below registers them."""
from diffreid.data.readers._files import IMAGE_EXTENSIONS, DatasetWarning, parse_market_name
from diffreid.data.readers._registry import READERS, available_datasets, load_dataset, register_dataset
from diffreid.data.readers.airport import airport
from diffreid.data.readers.domain_generalisation import cuhk02, cuhksysu, grid, ilids, prid2011, viper
from diffreid.data.readers.market import cuhk03, market1501, market_layout, read_market_folder
from diffreid.data.readers.msmt17 import msmt17
from diffreid.data.readers.visible_infrared import llcm, regdb, sysu_mm01

__all__ = [
    "IMAGE_EXTENSIONS", "READERS", "DatasetWarning", "airport", "available_datasets", "cuhk02", "cuhk03", "cuhksysu",
    "grid", "ilids", "llcm", "load_dataset", "market1501", "market_layout", "msmt17", "parse_market_name", "prid2011",
    "read_market_folder", "regdb", "register_dataset", "sysu_mm01", "viper",
]
