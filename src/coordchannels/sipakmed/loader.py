"""The trainer's view of SiPaKMeD: the 20 affine variants of every image, computed per batch on the
device from the image cache and the variant table; no variant is ever written to disk (the
authors' scripts wrote 80460 float32 tensors, about 105 GB per arm).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from coordchannels.channels import KINDS, N_EXTRA, extra_channels_2d
from coordchannels.folds import SIPAKMED_GROUPINGS
from coordchannels.settings import choice
from coordchannels.sipakmed import warp
from coordchannels.sipakmed.cells import CENTRES
from coordchannels.sipakmed.folds import FOLDS_CSV
from coordchannels.sipakmed.preprocess import CACHE_NPZ, IMAGES_NPY, VARIANTS_CSV
from coordchannels.stages import require_input
from coordchannels.taskdata import folds_present

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Loader: the trainer's view of the task
# --------------------------------------------------------------------------------------------


def box_mask(box: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 1, size, size) bool: True inside each image's box (top, left, height, width)."""
    r = torch.arange(size, device=box.device)
    top, left, height, width = box.unbind(dim=1)
    rows = (r[None] >= top[:, None]) & (r[None] < (top + height)[:, None])
    cols = (r[None] >= left[:, None]) & (r[None] < (left + width)[:, None])
    return (rows[:, :, None] & cols[:, None, :])[:, None]


@dataclass
class SipakmedTaskData:
    """Base images on the device; each sample `image * n_variants + variant` is warped per batch."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    mean: torch.Tensor  # (N,) float32
    std: torch.Tensor  # (N,) float32
    box: torch.Tensor  # (N, 4) int64: top, left, height, width
    centres: torch.Tensor  # (N, 2) float64, in the S x S frame
    params: torch.Tensor  # (N * n_variants, 4) float64: tx, ty, angle_deg, scale
    image_fold: np.ndarray  # (N,) fold of each base image
    n_variants: int
    channels: str
    target_stats_samples: int | None = 10000
    target_names: tuple[str, ...] = ("h", "k")

    @property
    def n_channels(self) -> int:
        return 3 + N_EXTRA["2d"][self.channels]

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.params.shape[0])

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) sample indices in the scripts' order: training folds ascending, within a
        fold images by sample id, each image's variants 0..19 in a row. The order matters for
        the target statistics, taken from the first 10000 training samples."""
        folds = folds_present(self.image_fold, fold)
        train_images = np.concatenate([np.flatnonzero(self.image_fold == f) for f in folds if f != fold])
        test_images = np.flatnonzero(self.image_fold == fold)
        return self._expand(train_images), self._expand(test_images)

    def _expand(self, images: np.ndarray) -> np.ndarray:
        return (images[:, None] * self.n_variants + np.arange(self.n_variants)[None]).ravel().astype(np.int64)

    def matrices(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, 2, 3) forward maps of samples `idx` (float64)."""
        return warp.affine_matrices(self.params[idx], size=self.size)

    def base_images(self, image: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) float32 normalised base images, 0 outside each image's box."""
        x = self.images[image].float()
        x = (x - self.mean[image, None, None, None]) / self.std[image, None, None, None]
        return x * box_mask(self.box[image], self.size)

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx, device=self.images.device).long()
        x = warp.warp_images(self.base_images(idx // self.n_variants), self.matrices(idx))
        return torch.cat([x, extra_channels_2d(x, self.channels)], dim=1)

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, 2) float32 = (h, k): the centre moved by the variant's map. Both centre definitions
        commute with affine maps, so this equals recomputing them from the warped contour."""
        idx = torch.as_tensor(idx, device=self.images.device).long()
        centres = self.centres[idx // self.n_variants][:, None, :]
        return warp.warp_points(centres, self.matrices(idx))[:, 0].float()


def read_cache(out: Path) -> dict[str, np.ndarray]:
    with np.load(require_input(out / CACHE_NPZ, "preprocess", "sipakmed")) as npz:
        return {key: npz[key] for key in npz.files}


def contours_of(cache: dict[str, np.ndarray], i: int) -> np.ndarray:
    """Contour (P, 2) of image i in the model frame, from the ragged arrays of cache.npz."""
    return cache["points"][cache["offsets"][i] : cache["offsets"][i + 1]]


def image_folds(folds_dir: Path, ids: np.ndarray, group_by: str) -> np.ndarray:
    """The fold of every cached image, from folds.csv column fold_<group_by>."""
    choice(group_by, SIPAKMED_GROUPINGS, "task.data.group_by")
    path = require_input(Path(folds_dir) / FOLDS_CSV, "folds", "sipakmed")
    folds = pd.read_csv(path, dtype={"sample_id": str})
    mapping = dict(zip(folds["sample_id"], folds[f"fold_{group_by}"]))
    missing = [i for i in ids if i not in mapping]
    if missing:
        raise ValueError(f"{path} lacks samples {missing[:5]}: rerun the folds stage (overwrite=true)")
    return np.array([mapping[i] for i in ids], dtype=np.int64)


def load_task_data(cfg: DictConfig, arm: DictConfig, device) -> SipakmedTaskData:
    """The cache on `device`, the variant table and the folds: what the trainer trains on."""
    data = cfg.task.data
    if arm.channels not in KINDS:
        raise ValueError(f"arm {arm.name!r}: unknown channel kind {arm.channels!r}; expected one of {KINDS}")
    out = Path(cfg.task.processed_dir)
    device = torch.device(device)
    cache = read_cache(out)
    ids = cache["sample_id"].astype(str)
    images = np.load(require_input(out / IMAGES_NPY, "preprocess", "sipakmed"), mmap_mode="r")
    params = warp.table_params(
        pd.read_csv(require_input(out / VARIANTS_CSV, "preprocess", "sipakmed")), str(out / VARIANTS_CSV)
    )
    n_variants = int(data.n_variants)
    stale = len(images) != len(ids) or images.shape[-1] != int(data.image_size) or len(params) != len(ids) * n_variants
    if stale:
        raise ValueError(
            f"{out}: cache ({len(images)} images of {images.shape[-1]} px, {len(params)} variants) "
            f"does not match {len(ids)} samples x task.data.n_variants={n_variants} at "
            f"image_size={data.image_size}: rerun `make data TASK=sipakmed ARGS=overwrite=true`"
        )
    centres = cache[f"centre_{choice(str(data.centre), CENTRES, 'task.data.centre')}"]
    if not np.isfinite(centres).all():
        bad = ids[~np.isfinite(centres).all(axis=1)]
        raise ValueError(f"{out / CACHE_NPZ}: no {data.centre} centre for {list(bad[:5])} (contour without area)")
    stats = data.get("target_stats_samples")
    return SipakmedTaskData(
        images=torch.from_numpy(np.array(images)).to(device),  # a writable copy, read once
        mean=torch.from_numpy(cache["mean"]).float().to(device),
        std=torch.from_numpy(cache["std"]).float().to(device),
        box=torch.from_numpy(cache["box"]).long().to(device),
        centres=torch.from_numpy(centres).double().to(device),
        params=torch.from_numpy(params).to(device),
        image_fold=image_folds(Path(cfg.task.folds_dir), ids, str(data.group_by)),
        n_variants=n_variants,
        channels=str(arm.channels),
        target_stats_samples=None if stats is None else int(stats),
    )
