"""The 8x8 handwritten digits that ship inside scikit-learn: the CPU quickstart's data, no download."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DIGITS_SHAPE", "load_digits_split"]

# Fixed train/test split of sklearn's 1,797 digits: RandomState(0) permutation, first 1,497 train.
DIGITS_N_TRAIN = 1497
DIGITS_SHAPE = (1, 8, 8)


def load_digits_split(shape: tuple[int, int, int], split: str) -> torch.Tensor:
    if shape != DIGITS_SHAPE:
        raise ValueError(
            f"source='digits' gives 8x8 grayscale images: image_shape must be (1, 8, 8), got {shape}"
        )
    try:
        # Imported lazily: scikit-learn is only needed for the quickstart data set.
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "source='digits' needs scikit-learn: `pip install scikit-learn` "
            "(or install the project's extra: `pip install 'damc-engine[quickstart]'`)"
        ) from e
    raw = load_digits().images  # (1797, 8, 8) float64, integer values 0..16, bundled with sklearn
    u8 = np.round(raw * (255.0 / 16.0)).astype(np.uint8)
    perm = np.random.RandomState(0).permutation(len(u8))
    idx = perm[:DIGITS_N_TRAIN] if split == "train" else perm[DIGITS_N_TRAIN:]
    return torch.from_numpy(np.ascontiguousarray(u8[idx][:, None]))
