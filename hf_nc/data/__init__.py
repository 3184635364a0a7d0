"""Image datasets for hf-nc: Hub names, local folders, built-in offline sets; transforms; subsets.

Public API:
    load_image_dataset(name_or_path, *, image_column=None, label_column=None,
                       shots_per_class=None, classes=None, seed=0, test_size=0.2, ...) -> DatasetDict
    build_transforms(model_or_config_or_path, train, augment=False, ...) -> callable for with_transform
    collate_fn(examples) -> dict of tensors
    select_classes, sample_shots, few_shot_indices, DataNotFoundError
"""

from .builtin import FASHION_MNIST_CLASSES, fashion_mnist_dir, load_digits_dataset, load_fashion_mnist
from .errors import DataNotFoundError, hub_offline
from .loading import load_image_dataset
from .subsets import few_shot_indices, sample_shots, select_classes, stratified_indices
from .transforms import ImageSpec, ImageTransform, build_transforms, collate_fn, resolve_image_spec

__all__ = [
    "DataNotFoundError",
    "FASHION_MNIST_CLASSES",
    "ImageSpec",
    "ImageTransform",
    "build_transforms",
    "collate_fn",
    "fashion_mnist_dir",
    "few_shot_indices",
    "hub_offline",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_image_dataset",
    "resolve_image_spec",
    "sample_shots",
    "select_classes",
    "stratified_indices",
]
