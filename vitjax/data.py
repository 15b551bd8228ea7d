"""Preprocessing and datasets, by their public names (timm's data API for vitjax models).

``resolve_data_config`` / ``create_transform`` equal timm's for eval (numpy HWC out);
``ImageDataset``, ``load_digits_dataset``, ``make_loader`` are the training data pipeline.
"""

from vitjax.training.data import ImageDataset, load_digits_dataset, make_loader, read_image
from vitjax.training.transforms import (
    DataConfig,
    EvalTransform,
    TrainTransform,
    create_transform,
    resolve_data_config,
    resolve_model_data_config,
)

__all__ = [
    "DataConfig",
    "EvalTransform",
    "ImageDataset",
    "TrainTransform",
    "create_transform",
    "load_digits_dataset",
    "make_loader",
    "read_image",
    "resolve_data_config",
    "resolve_model_data_config",
]
