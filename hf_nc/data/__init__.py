"""Image datasets for hf-nc: Hub names, local folders, built-in offline sets; transforms; subsets.

Public API:
    load_image_dataset(name_or_path, *, image_column=None, label_column=None,
                       shots_per_class=None, classes=None, seed=0, test_size=0.2, split_seed=0,
                       validation_split=None, validation_shots_per_class=None,
                       verify=None, on_bad_image="raise", progress=True, **load_kwargs) -> DatasetDict
    split_provenance(dataset_dict) -> {split: how it was made}
    verify_images(dataset, split, on_bad_image="raise") -> dataset (every image decoded once)
    build_transforms(model_or_config_or_path, train, augment=False, ..., image_size=None) -> callable for with_transform
    collate_fn(examples) -> dict of tensors
    select_classes, sample_shots, few_shot_indices, stratified_indices, proportional_indices, stratified_subset,
    to_8bit, DataNotFoundError, CorruptImageError
"""

from .builtin import FASHION_MNIST_CLASSES, fashion_mnist_dir, load_digits_dataset, load_fashion_mnist
from .errors import CorruptImageError, DataNotFoundError, hub_offline
from .loading import load_image_dataset, split_provenance, verify_images
from .subsets import few_shot_indices, proportional_indices, sample_shots, select_classes, stratified_indices, stratified_subset
from .transforms import ImageSpec, ImageTransform, build_transforms, collate_fn, resolve_image_spec, to_8bit, with_image_size

__all__ = [
    "CorruptImageError",
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
    "proportional_indices",
    "resolve_image_spec",
    "sample_shots",
    "select_classes",
    "split_provenance",
    "stratified_indices",
    "stratified_subset",
    "to_8bit",
    "verify_images",
    "with_image_size",
]
