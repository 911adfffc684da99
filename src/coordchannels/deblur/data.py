"""The deblurring task's data stages (`images`, `blur`) and the loader the trainer reads.

`images` writes the sharp images (sharp.npy, (N, S, S) float32 in [0, 1]) and the source image of
each (groups.npy: the image itself when generated, its file when cut from a folder), so that the
validation set never shares a source image with the training set. `blur` writes the lens's per-pixel
PSF field (psf.npy), the blurred images (blurred.npy) and psf_report.json: the kernel size and the
error of the low-rank basis approximation against the exact blur, measured on the first
BASIS_CHECK images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from coordchannels.deblur.images import CellSettings, folder_patches, generate
from coordchannels.deblur.psf import Lens, PSFBasis, blur_direct, psf_field, relative_error
from coordchannels.io import save_npy, write_text
from coordchannels.settings import SettingError, choice
from coordchannels.stages import StageContext, require_input

log = logging.getLogger(__name__)

SOURCES = ("generated", "folder")
APPLY = ("direct", "basis")
BLUR_CHUNK = 64  # images blurred at once (bounds memory: K*K*S*S floats per image)
BASIS_CHECK = 64  # images on which the basis approximation's error is measured


def check_settings(cfg: DictConfig) -> None:
    """The `images` stage's check, before any stage runs: the patch size suits every model of the
    grid (U-Net(d) halves it d times), and the split leaves images on both sides."""
    from coordchannels.deblur.unet import check_size

    d = cfg.task.data
    size = int(d.patch_size)
    selected = cfg.train.models if cfg.train.get("models") is not None else list(cfg.task.models)
    for name in selected:
        depth = cfg.task.models[name].net.get("depth") if name in cfg.task.models else None
        if depth is not None:
            try:
                check_size(size, int(depth))
            except ValueError as exc:
                raise SettingError(f"task.data.patch_size={size} does not suit model {name}: {exc}") from None
    if not 0 < float(d.val_fraction) < 1:
        raise SettingError(f"task.data.val_fraction={d.val_fraction}: must be between 0 and 1")
    if int(d.n_images) < 2:
        raise SettingError(f"task.data.n_images={d.n_images}: need at least 2 (training and validation)")


def images_stage(cfg: DictConfig, ctx: StageContext) -> None:
    d = cfg.task.data
    size, n, seed = int(d.patch_size), int(d.n_images), int(d.image_seed)
    if choice(str(d.source), SOURCES, "task.data.source") == "generated":
        sharp = generate(n, size, seed, CellSettings.from_config(d.generator))
        groups = np.arange(n)
    else:
        if not d.get("folder"):
            raise ValueError("task.data.source=folder needs task.data.folder (DEBLUR_IMAGES_DIR=<folder of images>)")
        sharp, groups = folder_patches(Path(str(d.folder)), n, size, seed)
    save_npy(ctx.out / "sharp.npy", sharp)
    save_npy(ctx.out / "groups.npy", groups.astype(np.int64))
    log.info("%d sharp %s images of %dx%d px in %s", n, d.source, size, size, ctx.out)


def blur_stage(cfg: DictConfig, ctx: StageContext) -> None:
    d = cfg.task.data
    sharp = np.load(require_input(ctx.after["images"] / "sharp.npy", "images", cfg.task.name))
    lens = Lens.from_config(d.psf)
    field = psf_field(sharp.shape[-1], lens)
    basis = PSFBasis.fit(field, float(d.basis_tolerance))
    method = choice(str(d.apply), APPLY, "task.data.apply")
    field_t = torch.as_tensor(field)
    blur = (lambda x: blur_direct(x, field_t)) if method == "direct" else basis.blur
    y = np.concatenate(
        [
            blur(torch.as_tensor(sharp[i : i + BLUR_CHUNK], dtype=torch.float64)).numpy()
            for i in range(0, len(sharp), BLUR_CHUNK)
        ]
    )
    check = torch.as_tensor(sharp[:BASIS_CHECK], dtype=torch.float64)
    if float(d.blur_noise) > 0:  # camera noise after the lens, seeded apart from the images
        y = y + float(d.blur_noise) * np.random.default_rng([int(d.image_seed), 1]).standard_normal(y.shape)
    save_npy(ctx.out / "psf.npy", field.astype(np.float32))
    save_npy(ctx.out / "blurred.npy", y.astype(np.float32))
    report = {
        "kernel_size": lens.kernel_size,
        "sigma_centre_px": lens.sigma_centre,
        "sigma_edge_px": lens.sigma_edge,
        "applied": method,
        "basis_rank": basis.rank,
        "basis_tolerance": float(d.basis_tolerance),
        "basis_field_relative_error": relative_error(torch.as_tensor(basis.field()), field_t),
        "basis_blur_relative_error": relative_error(basis.blur(check), blur_direct(check, field_t)),
        "basis_checked_on_images": len(check),
    }
    write_text(ctx.out / "psf_report.json", json.dumps(report, indent=1) + "\n")
    log.info("blurred %d images: %s", len(y), report)


# --------------------------------------------------------------------------------------------
# The loader (coordchannels.taskdata.TaskData)
# --------------------------------------------------------------------------------------------
def split_groups(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) image indices: a seeded share of the source images goes to validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"task.data.val_fraction={val_fraction}: must be between 0 and 1")
    unique = np.unique(groups)
    n_val = max(1, int(round(val_fraction * len(unique))))
    if n_val >= len(unique):
        raise ValueError(f"task.data.val_fraction={val_fraction} leaves no training images ({len(unique)} sources)")
    val_groups = np.random.default_rng(seed).permutation(unique)[:n_val]
    is_val = np.isin(groups, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


@dataclass
class DeblurData:
    """Blurred inputs and sharp targets, (N, 1, S, S) on the device; fold 1 is the one split."""

    blurred: torch.Tensor
    sharp: torch.Tensor
    train_idx: np.ndarray
    val_idx: np.ndarray
    target_names: tuple[str, ...] = ("",)
    n_channels: int = 1
    target_stats_samples: int | None = None

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        if fold != 1:
            raise ValueError(f"fold {fold} does not exist; the deblurring task has one split (fold 1)")
        return self.train_idx, self.val_idx

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        return self.blurred[idx.to(self.blurred.device)]

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        return self.sharp[idx.to(self.sharp.device)]


def load_task_data(
    cfg: DictConfig, arm_cfg: DictConfig | None = None, device: torch.device | str = "cpu"
) -> DeblurData:
    folder = Path(cfg.task.processed_dir)
    name = cfg.task.name
    sharp = np.load(require_input(folder / "sharp.npy", "images", name))
    blurred = np.load(require_input(folder / "blurred.npy", "blur", name))
    groups = np.load(require_input(folder / "groups.npy", "images", name))
    train, val = split_groups(groups, float(cfg.task.data.val_fraction), int(cfg.task.data.split_seed))
    as_tensor = lambda a: torch.as_tensor(a[:, None], dtype=torch.float32, device=device)  # noqa: E731
    return DeblurData(as_tensor(blurred), as_tensor(sharp), train, val)
