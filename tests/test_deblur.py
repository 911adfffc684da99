"""The deblurring task (issue 26): images, lens, Wiener deconvolution, models, schedule, folder
source, and a tiny run through every stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from coordchannels.coordgate import CoordGate
from coordchannels.deblur.data import split_groups
from coordchannels.deblur.images import CellSettings, folder_patches, generate, read_grey
from coordchannels.deblur.psf import Lens, PSFBasis, blur_direct, psf_field, relative_error, sigma_map
from coordchannels.deblur.report import FIGURES
from coordchannels.deblur.training import plateau_lr
from coordchannels.deblur.unet import MultiWienerNet, UNet, n_parameters, unet_parameter_count, widths
from coordchannels.deblur.wiener import blur_circular, wiener_deconvolve, wiener_filter
from coordchannels.train import build_model
from tests.conftest import compose_config, train_killed_after_epoch

LENS = Lens(sigma_centre=0.0, sigma_edge=2.0, power=1.5, anisotropy=0.3)


# ------------------------------------------------------------------------------------ images
def test_the_generator_is_a_function_of_the_seed_and_the_index():
    a, b = generate(4, 32, seed=7), generate(4, 32, seed=7)
    assert a.dtype == np.float32 and a.shape == (4, 32, 32)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(generate(2, 32, seed=7), a[:2])  # image i does not depend on n
    assert not np.array_equal(generate(4, 32, seed=8), a)
    assert 0.0 <= a.min() and a.max() <= 1.0
    # Cells on a dark background: most pixels dark, some bright.
    assert np.median(a) < 0.3 and a.max() > 0.5


def test_noise_settings_change_the_images_but_not_the_cells():
    clean = generate(2, 32, 3, CellSettings(photons=0, read_noise=0))
    noisy = generate(2, 32, 3, CellSettings(photons=100, read_noise=0.02))
    assert 0.005 < np.abs(noisy - clean).mean() < 0.1


# ------------------------------------------------------------------------------------ the lens
def _width(kernel: np.ndarray) -> float:
    """RMS radius of a kernel (pixels)."""
    k = kernel.shape[-1]
    d = np.arange(k) - k // 2
    dy, dx = np.meshgrid(d, d, indexing="ij")
    return float(np.sqrt((kernel * (dy**2 + dx**2)).sum()))


def test_the_psf_is_in_focus_at_the_centre_and_widens_towards_the_edge():
    field = psf_field(33, LENS)  # odd size: pixel 16 is the exact centre
    c = field.shape[-1] // 2
    assert field[16, 16, c, c] == pytest.approx(1.0)  # a delta: in focus
    widths_along_diagonal = [_width(field[i, i]) for i in range(16, 33, 4)]
    assert all(a < b for a, b in zip(widths_along_diagonal, widths_along_diagonal[1:]))
    assert _width(field[0, 0]) > 2.0
    np.testing.assert_allclose(field.sum(axis=(-2, -1)), 1.0, atol=1e-12)  # every PSF keeps its energy
    assert sigma_map(33, LENS)[0, 0] == pytest.approx(LENS.sigma_edge)


def test_anisotropy_stretches_the_psf_along_the_radius():
    field = psf_field(33, Lens(0.0, 2.0, 1.0, anisotropy=0.5))
    corner = field[0, 0]  # radial direction = the diagonal
    k = corner.shape[-1]
    diag = np.array([corner[i, i] for i in range(k)])
    anti = np.array([corner[i, k - 1 - i] for i in range(k)])
    assert (diag > 1e-4).sum() > (anti > 1e-4).sum()


def test_the_exact_blur_scatters_every_pixel_with_its_own_psf():
    rng = np.random.default_rng(0)
    img = rng.random((12, 12))
    lens = Lens(0.5, 1.5, 1.0, 0.3)
    field = psf_field(12, lens)
    k = field.shape[-1]
    expected = np.zeros((12 + k, 12 + k))
    for y in range(12):
        for x in range(12):  # pixel (y, x) adds its light, spread by its own PSF
            expected[y : y + k, x : x + k] += img[y, x] * field[y, x]
    expected = expected[k // 2 : k // 2 + 12, k // 2 : k // 2 + 12]
    got = blur_direct(torch.as_tensor(img)[None], torch.as_tensor(field))[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_the_blur_preserves_energy():
    img = torch.zeros(1, 32, 32, dtype=torch.float64)
    img[0, 10:22, 8:24] = torch.rand(12, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = blur_direct(img, torch.as_tensor(psf_field(32, Lens(0.0, 1.5, 1.0, 0.0))))
    assert float(out.sum()) == pytest.approx(float(img.sum()), rel=1e-12)


@pytest.mark.parametrize("tolerance", [0.05, 0.01])
def test_the_basis_approximation_stays_within_its_stated_bound(tolerance):
    field = psf_field(32, LENS)
    basis = PSFBasis.fit(field, tolerance)
    assert 1 <= basis.rank < field.shape[-1] ** 2
    assert relative_error(torch.as_tensor(basis.field()), torch.as_tensor(field)) <= tolerance
    x = torch.as_tensor(generate(8, 32, 0), dtype=torch.float64)
    exact = blur_direct(x, torch.as_tensor(field))
    # The basis blur is the exact blur of the approximated field, so its error is the field's, bounded.
    np.testing.assert_allclose(
        basis.blur(x).numpy(), blur_direct(x, torch.as_tensor(basis.field())).numpy(), atol=1e-10
    )
    assert relative_error(basis.blur(x), exact) <= tolerance


def test_a_bad_lens_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="task.data.psf"):
        Lens.from_config({"sigma_centre": 3.0, "sigma_edge": 1.0})


# ------------------------------------------------------------------------------------ Wiener
def test_wiener_inverts_a_noise_free_blur():
    x = torch.as_tensor(generate(2, 32, 1), dtype=torch.float64)[:, None]
    psf = torch.as_tensor(psf_field(33, Lens(1.0, 1.0, 1.0, 0.0))[16, 16])  # one shift-invariant Gaussian
    y = blur_circular(x, psf)
    assert float((y - x).abs().max()) > 0.05  # the blur is real
    restored = wiener_filter(y, psf[None], 1e-12)
    assert float((restored - x).abs().max()) < 1e-4
    # With noise-to-signal > 0 it is a regularised (damped) inverse: worse, still close.
    assert float((wiener_filter(y, psf[None], 1e-3) - x).abs().max()) > 1e-4


def test_wiener_of_non_periodic_images_keeps_their_size_and_one_map_per_psf():
    y = torch.rand(3, 1, 64, 64)
    psfs = torch.as_tensor(psf_field(64, LENS)[[0, 32, 63], [0, 32, 63]], dtype=torch.float32)
    assert wiener_deconvolve(y, psfs, 0.01).shape == (3, 3, 64, 64)


# ------------------------------------------------------------------------------------ models
def test_every_task_model_runs_and_has_the_parameter_count_it_reports(tmp_path):
    cfg = compose_config(["task=deblur", f"paths.root_dir={tmp_path}"])
    psf_file = tmp_path / "data" / "processed" / "deblur" / "psf.npy"
    psf_file.parent.mkdir(parents=True)
    np.save(psf_file, psf_field(64, LENS).astype(np.float32))
    net = cfg.task.net
    x = torch.rand(2, 1, 64, 64)
    for name, model_cfg in cfg.task.models.items():
        torch.manual_seed(0)
        model = build_model(model_cfg, cfg.arms.none, 1)
        assert model(x).shape == (2, 1, 64, 64), name
        plain = unet_parameter_count(1, int(model_cfg.depth), int(net.base_channels), net.max_channels)
        family = str(model_cfg.family)
        if family == "unet":
            assert n_parameters(model) == plain, name
        elif family == "coordconv":
            assert n_parameters(model) == plain + 2 * 9 * int(net.base_channels), name  # 2 more input channels
        elif family == "coordgate":
            w = widths(int(model_cfg.depth), int(net.base_channels), net.max_channels)
            h, layers = int(net.gate.hidden), int(net.gate.n_layers)
            # Encoder: 2 -> h, (layers - 2) x h -> h, h -> c (1x1 convolutions with bias); one gate per
            # channel width of the levels that are down- and up-sampled.
            gates = sum(2 * h + h + (layers - 2) * (h * h + h) + h * c + c for c in w[:-1])
            assert n_parameters(model) == plain + 2 * gates, name
            assert sum(isinstance(m, CoordGate) for m in model.modules()) == 2 * int(model_cfg.depth)
        else:  # MultiWienerNet: 9 input maps and a learned noise-to-signal ratio
            positions = int(net.wiener.positions) ** 2
            first = 9 * int(net.base_channels)
            assert n_parameters(model) == plain + (positions - 1) * first + 1, name
    assert n_parameters(build_model(cfg.task.models.unet6, cfg.arms.none, 1)) > 60 * n_parameters(
        build_model(cfg.task.models.unet1_coordgate, cfg.arms.none, 1)
    )


@pytest.mark.parametrize("size, depth", [(64, 6), (32, 5), (8, 1), (12, 2)])
def test_a_unet_accepts_the_sizes_its_depth_allows(size, depth):
    model = UNet(depth=depth, size=size, base_channels=4, coordgate=True)
    assert model(torch.rand(1, 1, size, size)).shape == (1, 1, size, size)


@pytest.mark.parametrize("size, depth", [(48, 6), (30, 2), (64, 7), (16, 0)])
def test_a_unet_refuses_other_sizes_clearly(size, depth):
    with pytest.raises(ValueError, match="U-Net"):
        UNet(depth=depth, size=size)


def test_a_patch_size_the_models_cannot_take_is_refused_before_any_stage_runs(tmp_path):
    from coordchannels.pipeline import preflight
    from coordchannels.settings import SettingError

    cfg = compose_config(["task=deblur", f"paths.root_dir={tmp_path}", "task.data.patch_size=48"])
    with pytest.raises(SettingError, match=r"task.data.patch_size=48 does not suit model unet5: .*multiple of 2\^5"):
        preflight(cfg)
    assert not (tmp_path / "data").exists()
    preflight(
        compose_config(
            ["task=deblur", f"paths.root_dir={tmp_path}", "task.data.patch_size=48", "train.models=[unet1,unet4]"]
        )
    )  # 48 = 3 x 2^4 suits these


def test_a_unet_refuses_an_input_of_another_size():
    with pytest.raises(ValueError, match="built for 32x32 images"):
        UNet(depth=2, size=32)(torch.rand(1, 1, 64, 64))


def test_multiwienernet_takes_the_psfs_at_a_grid_of_positions(tmp_path):
    field = psf_field(32, LENS).astype(np.float32)
    np.save(tmp_path / "psf.npy", field)
    model = MultiWienerNet(psf_file=str(tmp_path / "psf.npy"), positions=2, depth=2, size=32, base_channels=4)
    assert model.psfs.shape[0] == 4
    assert {tuple(w) for w in model.where} == {(8, 8), (8, 24), (24, 8), (24, 24)}
    np.testing.assert_array_equal(model.psfs[0].numpy(), field[8, 8])


# ------------------------------------------------------------------------------------ schedule
def test_the_plateau_rule_is_torchs():
    rng = np.random.default_rng(1)
    losses = list(np.concatenate([np.linspace(1, 0.5, 5), 0.5 + 0.01 * rng.random(20), np.linspace(0.4, 0.3, 5)]))
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=3)
    for i, loss in enumerate(losses):
        sched.step(loss)
        assert plateau_lr(losses[: i + 1], 1e-3, 3, 0.5) == pytest.approx(opt.param_groups[0]["lr"]), i
    assert plateau_lr(losses, 1e-3, 3, 0.5) < 1e-3


# ------------------------------------------------------------------------------------ folder source
def _write_images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((70, 140)) * 65535).astype(np.uint16)).save(folder / "a.tif")
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / "b.png")


def test_the_folder_source_cuts_reproducible_patches_from_16_bit_and_rgb_images(tmp_path):
    _write_images(tmp_path / "imgs")
    patches, sources = folder_patches(tmp_path / "imgs", 3, 32, seed=0)
    again, _ = folder_patches(tmp_path / "imgs", 3, 32, seed=0)
    assert patches.shape == (3, 32, 32) and patches.dtype == np.float32
    np.testing.assert_array_equal(patches, again)
    assert set(sources) <= {0, 1} and 0 <= patches.min() and patches.max() <= 1
    assert read_grey(tmp_path / "imgs" / "b.png").shape == (64, 64)
    with pytest.raises(ValueError, match="12 patches of 32x32"):
        folder_patches(tmp_path / "imgs", 13, 32, seed=0)


def test_a_corrupt_image_is_named_in_the_error(tmp_path):
    _write_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image"):
        folder_patches(tmp_path / "imgs", 3, 32, seed=0)


def test_a_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="DEBLUR_IMAGES_DIR"):
        folder_patches(tmp_path / "nowhere", 1, 32, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        folder_patches(tmp_path / "empty", 1, 32, 0)


def test_validation_images_never_share_a_source_with_training():
    groups = np.repeat(np.arange(10), 3)
    train, val = split_groups(groups, 0.2, seed=0)
    assert len(val) == 6 and not set(groups[train]) & set(groups[val])
    assert sorted(np.concatenate([train, val])) == list(range(30))


# ------------------------------------------------------------------------------------ end to end
# debug=smoke, smaller still: 32 px images, a narrower lens, shallow nets (MultiWienerNet on U-Net(2)).
TINY = [
    "task=deblur",
    "debug=smoke",
    "task.data.n_images=30",
    "task.data.patch_size=32",
    "task.data.psf.sigma_edge=1.5",
    "task.models.multiwiener6.net.depth=2",
    "train.limit_train=16",
    "train.limit_test=8",
    "train.epochs=4",
    "train.n_jobs=1",
    "train.num_threads=1",
    "stats.n_resamples=200",
    "task.loop.patience=0",
]


def test_a_tiny_run_goes_through_every_stage(tmp_path):
    """images, blur, train, stats, manifest on a few images and models; done work is not redone."""
    from coordchannels.pipeline import run_stages
    from coordchannels.stages import stage_spec

    models = "train.models=[unet1,unet1_coordgate,multiwiener6]"
    cfg = compose_config([*TINY, models, f"paths.root_dir={tmp_path}"])
    assert run_stages(cfg) == ["images", "blur", "train", "stats", "manifest"]
    out = stage_spec(cfg, "stats").out
    for name in ["metrics.csv", "summary.md", "table.md", "manifest.json", *FIGURES]:
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.label) == ["U-Net(1)", "U-Net(1) + CoordGate", "MultiWienerNet(6)"]
    assert table.psnr.between(5, 60).all() and table.ssim.between(-1, 1).all()
    summary = (out / "summary.md").read_text()
    assert "SMOKE RUN" in summary and "CPU SCALE: 30 generated 32x32 px images" in summary
    assert (
        "(b) U-Net(1) + CoordGate beats U-Net(6) with about 60x fewer parameters: not tested: unet6 not trained"
        in summary
    )
    report = json.loads((tmp_path / "data" / "smoke" / "processed" / "deblur" / "psf_report.json").read_text())
    assert report["basis_blur_relative_error"] <= report["basis_tolerance"]
    assert run_stages(cfg) == []  # finished work is not redone


def test_a_killed_job_resumes_to_the_log_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """The learning-rate schedule is a function of the logged losses, so resuming needs no other state."""
    from coordchannels import train
    from coordchannels.pipeline import run_stages

    def config(run: str):
        return compose_config([*TINY, "train.models=[unet1]", f"paths.root_dir={tmp_path}", f"train.run_name={run}"])

    whole = config("whole")
    run_stages(compose_config([*TINY, "train.models=[unet1]", f"paths.root_dir={tmp_path}", "stages=[images,blur]"]))
    train.train_stage(whole)
    uninterrupted = pd.read_csv(train.job_log_path(whole, train.job_grid(whole)[0]))
    assert list(uninterrupted.columns) == ["epoch", "train_loss", "val_loss", "val_psnr", "val_ssim", "lr"]
    killed = config("killed")
    train_killed_after_epoch(killed, monkeypatch, epoch=2)
    train.train_stage(killed)
    pd.testing.assert_frame_equal(pd.read_csv(train.job_log_path(killed, train.job_grid(killed)[0])), uninterrupted)
    assert math.isfinite(uninterrupted.val_psnr.iloc[-1])


# ------------------------------------------------------------------------------------ statistics
def _evaluation(model: str, psnr_by_seed: list[float], n_params: int, centre: float = 1.0, edge: float = 1.0):
    """An Evaluation with per-image PSNR = the seed's value + a fixed image pattern; an error map
    that is `centre` near the centre and `edge` at the edge."""
    from coordchannels.deblur.evaluate import Evaluation

    pattern = np.linspace(-0.5, 0.5, 50)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    emap = np.where(np.sqrt(yy**2 + xx**2) / np.sqrt(2) < 0.5, centre, edge)
    return Evaluation(
        model,
        list(range(len(psnr_by_seed))),
        n_params,
        np.array([p + pattern for p in psnr_by_seed]),
        np.array([0.5 + p / 100 + 0 * pattern for p in psnr_by_seed]),
        emap,
        np.zeros((1, 16, 16)),
    )


def test_the_claims_are_judged_from_the_numbers_and_seeds_give_a_spread():
    from coordchannels.deblur.report import claim_lines, metrics_table

    cfg = compose_config(["task=deblur"])
    ev = {
        **{f"unet{d}": _evaluation(f"unet{d}", [20.0 + d, 20.2 + d], 1000 * 4**d) for d in range(1, 7)},
        "unet1_coordgate": _evaluation("unet1_coordgate", [28.0, 28.4], 1100, centre=0.1, edge=1.0),
        "unet6_coordgate": _evaluation("unet6_coordgate", [29.0, 29.2], 4_100_000, centre=0.2, edge=1.0),
        "coordconv_unet6": _evaluation("coordconv_unet6", [26.1, 26.3], 4_096_100),
        "multiwiener6": _evaluation("multiwiener6", [27.0, 27.2], 4_097_000),
    }
    table = metrics_table(cfg, ev, 500, 0, 0.95)
    assert list(table.model) == list(cfg.task.models)  # the paper's order
    row = table.set_index("model").loc["unet1_coordgate"]
    assert row.psnr == pytest.approx(28.2) and row.psnr_seed_sd == pytest.approx(np.std([28.0, 28.4], ddof=1))
    assert row.psnr_low < 28.2 < row.psnr_high and row.centre_edge_ratio == pytest.approx(0.1)
    lines = claim_lines(cfg, table, ev)
    assert [line[:3] for line in lines] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)"]
    assert all("**holds**" in line for line in lines), lines
    assert "3724x fewer parameters" in lines[1]
    from coordchannels.deblur.report import gate_gains

    gains = gate_gains(cfg, ev)
    assert gains[0].startswith("CoordGate on U-Net(1): +7.10 dB") and gains[1].startswith(
        "CoordGate on U-Net(6): +3.00 dB"
    )
    ev["coordconv_unet6"] = _evaluation("coordconv_unet6", [24.0, 24.2], 4_096_100)  # 2 dB below U-Net(6)
    ev["unet1_coordgate"] = _evaluation("unet1_coordgate", [25.0, 25.2], 1100, centre=0.9, edge=1.0)
    lines = claim_lines(cfg, metrics_table(cfg, ev, 500, 0, 0.95), ev)
    for claim in ("(b)", "(d)", "(e)", "(g)"):
        assert "**does not hold**" in next(line for line in lines if line.startswith(claim)), claim


@pytest.mark.slow
def test_jobs_submitted_through_submitit_give_the_serial_logs(tmp_path):
    """Each model is a job submitit can take (train.executor=submitit; here its local cluster, one
    process per job): the logs are byte for byte those of a serial run."""
    import json
    import subprocess
    import sys

    from coordchannels import train
    from coordchannels.pipeline import run_stages
    from coordchannels.train.record import job_record_path

    models = "train.models=[unet1,unet1_coordgate]"
    serial = compose_config([*TINY, models, f"paths.root_dir={tmp_path / 'serial'}", "stages=[images,blur,train]"])
    run_stages(serial)
    root = tmp_path / "submitit"
    command = [sys.executable, "-m", "coordchannels", *TINY, models, f"paths.root_dir={root}"]
    done = subprocess.run(
        [*command, "stages=[images,blur,train]", "train.executor=submitit", "train/submitit=local"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    submitted = compose_config([*TINY, models, f"paths.root_dir={root}"])
    for job in train.job_grid(serial):
        assert train.job_log_path(submitted, job).read_bytes() == train.job_log_path(serial, job).read_bytes(), job
        record = json.loads(job_record_path(submitted, job).read_text())
        assert record["launcher"] == "submitit_local", job  # trained in a submitit job, not here


def test_the_committed_table_is_what_the_report_writes_from_the_committed_metrics():
    """results/deblur/table.md, byte for byte, from results/deblur/metrics.csv (the markdown-table
    helper keeps the committed layout: a spaced alignment rule, empty cells as `| |`)."""
    import re
    from pathlib import Path

    import pandas as pd

    from coordchannels.deblur.report import markdown

    folder = Path(__file__).resolve().parents[1] / "results" / "deblur"
    if not (folder / "table.md").is_file():
        pytest.skip("no committed results/deblur")
    committed = (folder / "table.md").read_text()
    blurred = re.search(r"\| blurred input \(no restoration\) \| 0 \| ([\d.]+) \| \| ([\d.]+) \|", committed)
    n_val = int(re.search(r"over (\d+) images", committed).group(1))
    head = committed.splitlines()[0].strip("*")
    table = pd.read_csv(folder / "metrics.csv")
    assert markdown(table, head, float(blurred.group(1)), float(blurred.group(2)), n_val, []) == committed
