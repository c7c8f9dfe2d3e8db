"""Training data in the datasets' distributed formats, and the batch stream (spec ``damc.md`` §3 "Data", §4).

Sources (one module each; :func:`load_images` dispatches on ``data.source`` and decodes a split into a uint8
``(N, C, H, W)`` CPU tensor):

* ``digits`` (:mod:`~engine.data.digits`): the 8x8 handwritten digits inside scikit-learn (the CPU quickstart);
* ``folder`` (:mod:`~engine.data.folder`): ``ImageFolder``-style image folders (CelebA-64, CelebA-HQ, a JPEG
  export of CIFAR-10, ...), resized like ``Resize(int)``;
* ``cifar10`` (:mod:`~engine.data.cifar`): the python pickle batches or their ``.tar.gz``;
* ``svhn`` (:mod:`~engine.data.svhn`): ``train_32x32.mat`` / ``test_32x32.mat`` (needs scipy);
* ``mnist`` (:mod:`~engine.data.mnist`): the four IDX files with the anomaly split of spec §4.

``cifar10`` / ``svhn`` / ``mnist`` fetch the official files when absent and ``data.download`` allows it
(:mod:`~engine.data.download`: checksum verified before the file appears under its final name).

Batches: :class:`~engine.data.stream.EpochPlan` is the one sample order (shuffle + flip coins from the run seed);
:func:`make_loader` builds the CPU :class:`BatchStream`, the GPU-resident :class:`~engine.data.loaders.DeviceStream`
or a DALI pipeline (:mod:`~engine.data.dali`) on top of it, all interchangeable and exactly resumable;
:func:`fixed_batch` gives the first images for reconstruction grids; :func:`u8_to_float` is the bitwise-exact
``ToTensor + Normalize(0.5, 0.5)``.

Every data problem surfaces as one exception whose message names the file: missing data as
:class:`DatasetNotFoundError` (a ``FileNotFoundError``: where we looked, what we expected, how to get it),
unreadable or malformed files as ``ValueError``.
"""

from __future__ import annotations

from engine.data.download import DatasetNotFoundError, DownloadError
from engine.data.folder import FolderSpec
from engine.data.loaders import Loader, make_loader
from engine.data.mnist import load_mnist_anomaly
from engine.data.pixels import u8_to_float
from engine.data.sources import load_images
from engine.data.stream import BatchStream, EpochPlan, fixed_batch

__all__ = [
    "BatchStream",
    "DatasetNotFoundError",
    "DownloadError",
    "EpochPlan",
    "FolderSpec",
    "Loader",
    "fixed_batch",
    "load_images",
    "load_mnist_anomaly",
    "make_loader",
    "u8_to_float",
]
