"""SiPaKMeD preprocessing and folds (SPEC sections 2, 5, 9): resize / pad / centre arithmetic on
known shapes, OpenCV INTER_AREA weights, the invalid-sample exclusion, the 8-bit cache and its
error, the comparison with the authors' list, and folds.csv."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from coordchannels.folds import sipakmed_folds
from coordchannels.pipeline import run_stages
from coordchannels.sipakmed.cells import (
    area_weights,
    fit_cell,
    nucleus_centre,
    pad_offsets,
    polygon_centroid,
    read_cell_image,
    resize_area,
    resized_shape,
    vertex_mean,
)
from coordchannels.sipakmed.folds import FOLDS_CSV
from coordchannels.sipakmed.loader import contours_of, read_cache
from coordchannels.sipakmed.preprocess import (
    EXCLUDED_CSV,
    IMAGES_NPY,
    INVALID_COMPARE_CSV,
    SAMPLES_CSV,
    VARIANTS_CSV,
)
from coordchannels.sipakmed.synthetic import make_fake_sipakmed
from coordchannels.stages import StageError
from tests.conftest import call_stage

N_CELLS, N_INVALID = 15, 2


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return make_fake_sipakmed(tmp_path_factory.mktemp("fake"), N_CELLS, seed=7, archives=False, n_invalid=N_INVALID)


@pytest.fixture
def prepared(fake, make_cfg):
    """Factory: a config on the generated tree with download + preprocess (+ folds) run."""

    def factory(*overrides: str, folds: bool = True):
        cfg = make_cfg(
            "task=sipakmed",
            "task.data.fetch_authors_invalid=false",
            f"paths.sipakmed_mirror={fake.out_dir}",
            *overrides,
        )
        call_stage(cfg, "download")
        call_stage(cfg, "preprocess")
        if folds:
            call_stage(cfg, "folds")
        return cfg

    return factory


# ------------------------------------------------------------------ arithmetic on known shapes


def test_resize_and_pad_of_a_128_by_64_image():
    """128 x 64 (h x w): scale 2, 256 x 128, padded 64 px left and right; area upscaling by an
    integer factor repeats every pixel."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)
    assert resized_shape(128, 64) == (256, 128, 2.0)
    assert pad_offsets(256, 128) == (0, 64)
    points = np.array([[10.0, 20.0], [63.5, 127.0]])
    cell = fit_cell(image, points, 256)
    assert cell.box == (0, 64, 256, 128) and cell.scale == 2.0
    np.testing.assert_array_equal(cell.points, [[84.0, 40.0], [191.0, 254.0]])
    repeated = image.repeat(2, axis=0).repeat(2, axis=1).transpose(2, 0, 1)
    np.testing.assert_array_equal(cell.image[:, :, 64:192], repeated)
    assert not cell.image[:, :, :64].any() and not cell.image[:, :, 192:].any()
    assert cell.mean == pytest.approx(image.mean()) and cell.std == pytest.approx(image.std())


def test_wide_image_is_padded_top_and_bottom_odd_pixel_after():
    # 300 x 600 -> 128 x 256 (scale 256/600): pad 64 above; 255 rows -> 0 above, 1 below
    assert resized_shape(300, 600) == (128, 256, 256 / 600)
    assert pad_offsets(128, 256) == (64, 0)
    assert pad_offsets(255, 101) == (0, 77)
    with pytest.raises(ValueError, match="does not fit"):
        pad_offsets(257, 10)


def test_scripts_truncation_can_give_a_255_pixel_long_side():
    assert resized_shape(98, 50, rule="truncate")[:2] == (255, 130)
    assert resized_shape(98, 50, rule="round")[:2] == (256, 131)
    assert resized_shape(200, 200, rule="truncate")[:2] == (256, 256)
    with pytest.raises(ValueError, match="resize_rule"):
        resized_shape(10, 10, rule="nearest")


def test_area_weights_are_pixel_overlaps():
    w = area_weights(3, 2)  # each output pixel covers 1.5 input pixels
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    up = area_weights(2, 3)  # upscaling: the middle pixel straddles the border
    np.testing.assert_allclose(up, [[1, 0], [0.5, 0.5], [0, 1]])
    for n_in, n_out in ((300, 256), (97, 256), (1000, 37)):
        np.testing.assert_allclose(area_weights(n_in, n_out).sum(axis=1), 1.0)


def test_area_resize_matches_torch_area_for_integer_ratios_and_keeps_the_mean():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (512, 384, 3))
    ours = resize_area(image, 256, 192)
    theirs = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=(256, 192), mode="area")
    np.testing.assert_allclose(ours, theirs[0].permute(1, 2, 0).numpy(), atol=1e-9)
    odd = rng.uniform(0, 255, (301, 173, 3))
    assert resize_area(odd, 256, 147).mean() == pytest.approx(odd.mean(), rel=1e-3)
    # torch's "area" is adaptive pooling over whole pixels: not OpenCV's INTER_AREA for 301 -> 256
    pooled = F.interpolate(torch.from_numpy(odd).permute(2, 0, 1)[None], size=(256, 147), mode="area")
    assert np.abs(pooled[0].permute(1, 2, 0).numpy() - resize_area(odd, 256, 147)).max() > 1.0


# ------------------------------------------------------------------ centres


def test_vertex_mean_and_polygon_centroid_on_a_known_polygon():
    # a 2 x 2 square with an extra vertex on its bottom edge, closed (last point = first)
    square = np.array([[0, 0], [1, 0], [2, 0], [2, 2], [0, 2], [0, 0]], dtype=float)
    np.testing.assert_allclose(vertex_mean(square), [1.0, 0.8])  # 5 distinct vertices
    np.testing.assert_allclose(polygon_centroid(square), [1.0, 1.0])  # area centroid
    np.testing.assert_allclose(polygon_centroid(square[::-1]), [1.0, 1.0])  # orientation-free
    # an L shape: centroid of a 2x1 and a 1x1 rectangle
    ell = np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]], dtype=float)
    np.testing.assert_allclose(polygon_centroid(ell + 1000.0), np.array([5 / 6, 5 / 6]) + 1000.0)
    assert np.isnan(polygon_centroid(np.array([[0, 0], [1, 1], [2, 2.0]]))).all()  # no area
    with pytest.raises(ValueError, match="centre"):
        nucleus_centre(square, "median")


def test_both_centres_commute_with_affine_maps():
    rng = np.random.default_rng(2)
    t = np.linspace(0, 2 * np.pi, 23, endpoint=False)
    poly = np.stack([50 + 20 * np.cos(t) * rng.uniform(0.8, 1.2, 23), 70 + 9 * np.sin(t)], axis=1)
    a = np.array([[1.1 * np.cos(0.3), 1.1 * np.sin(0.3)], [-1.1 * np.sin(0.3), 1.1 * np.cos(0.3)]])
    shift = np.array([7.0, -4.0])
    for how in ("vertex_mean", "polygon_centroid"):
        np.testing.assert_allclose(nucleus_centre(poly @ a.T + shift, how), a @ nucleus_centre(poly, how) + shift)


# ------------------------------------------------------------------ the preprocess stage


def test_preprocess_excludes_invalid_cells_and_recovers_the_centres(prepared, fake):
    cfg = prepared(folds=False)
    out = Path(cfg.task.processed_dir)
    excluded = pd.read_csv(out / EXCLUDED_CSV)
    assert sorted(excluded["sample_id"]) == fake.invalid_ids
    assert excluded["reason"].str.contains("outside").all()
    samples = pd.read_csv(out / SAMPLES_CSV, dtype={"cell": str})
    truth = fake.cells[~fake.cells["invalid"]].set_index("sample_id").loc[samples["sample_id"]]
    assert list(samples["sample_id"]) == sorted(samples["sample_id"]) and len(samples) == N_CELLS - N_INVALID
    np.testing.assert_array_equal(samples["width"], truth["width"])
    np.testing.assert_allclose(samples["centre_x"], truth["centre_x"].to_numpy() * samples["scale"] + samples["left"])
    np.testing.assert_allclose(samples["centre_y"], truth["centre_y"].to_numpy() * samples["scale"] + samples["top"])
    assert samples["slide"].str.fullmatch(r"[1-5]_\d{3}").all() and samples["cell"].str.fullmatch(r"\d{2}").all()
    images = np.load(out / IMAGES_NPY)
    assert images.dtype == np.uint8 and images.shape == (len(samples), 3, 256, 256)
    cache = read_cache(out)
    assert list(cache["sample_id"]) == list(samples["sample_id"])
    np.testing.assert_allclose(cache["centre_vertex_mean"], samples[["centre_x", "centre_y"]])
    for i in range(len(samples)):
        np.testing.assert_allclose(vertex_mean(contours_of(cache, i)), cache["centre_vertex_mean"][i])
    variants = pd.read_csv(out / VARIANTS_CSV)
    assert len(variants) == 20 * len(samples)


def test_eight_bit_cache_error_is_within_half_a_grey_level_over_std(prepared, fake):
    """Normalising the cached 8-bit image on the device vs the float path: |error| <= 0.5 / std."""
    cfg = prepared(folds=False)
    out = Path(cfg.task.processed_dir)
    samples = pd.read_csv(out / SAMPLES_CSV)
    cache, images = read_cache(out), np.load(out / IMAGES_NPY)
    raw = Path(cfg.task.data.raw_dir) / "cropped"
    errors = []
    for i in range(3):
        row = samples.iloc[i]
        image = read_cell_image(raw / row["class"] / f"{row['sample_id'][2:]}.bmp")
        top, left, h, w = cache["box"][i]
        exact = (resize_area(image, h, w) - cache["mean"][i]) / cache["std"][i]
        cached = (images[i, :, top : top + h, left : left + w].transpose(1, 2, 0) - cache["mean"][i]) / cache["std"][i]
        err = np.abs(cached - exact).max()
        assert err <= 0.5 / cache["std"][i] + 1e-9
        errors.append(err)
    assert max(errors) > 0  # rounding happened: the bound is what is tested, not a no-op


def test_preprocess_compares_with_the_authors_list(prepared, fake, make_cfg):
    cfg = prepared(folds=False)
    raw = Path(cfg.task.data.raw_dir)
    ours = fake.invalid_ids
    (raw / "invalid_samples.csv").write_text("filename\n" + f"{ours[0]}.bmp\n" + "2_095_10\n")
    cfg = prepared("overwrite=true", folds=False)
    table = pd.read_csv(Path(cfg.task.processed_dir) / INVALID_COMPARE_CSV).set_index("sample_id")
    assert table.loc[ours[0]].tolist() == [True, True, True]
    assert table.loc[ours[1]].tolist() == [True, True, False]
    assert table.loc["2_095_10"].tolist() == [False, False, True]  # listed by them, not in this data


def write_authors_list(cfg, ids) -> None:
    (Path(cfg.task.data.raw_dir) / "invalid_samples.csv").write_text("filename\n" + "".join(f"{i}\n" for i in ids))


@pytest.mark.parametrize("rule", ["authors", "either"])
def test_invalid_rule_authors_or_either(prepared, fake, rule, caplog):
    """authors: exactly the listed ids present in the data go (a contour-invalid cell they do not
    list stays); either: both lists go. Folds follow the sample set."""
    cfg = prepared(folds=False)
    listed_valid = sorted(set(fake.cells["sample_id"]) - set(fake.invalid_ids))[0]
    listed = [fake.invalid_ids[0], listed_valid, "2_095_10"]  # the last is not in this data
    write_authors_list(cfg, listed)
    cfg = prepared(f"task.data.invalid_rule={rule}", "overwrite=true")
    out = Path(cfg.task.processed_dir)
    excluded = pd.read_csv(out / EXCLUDED_CSV).set_index("sample_id")["reason"]
    want = set(listed[:2]) | (set(fake.invalid_ids) if rule == "either" else set())
    assert set(excluded.index) == want
    assert "authors' invalid_samples.csv" in excluded[listed_valid]
    kept = set(pd.read_csv(out / SAMPLES_CSV, dtype=str)["sample_id"])
    assert kept == set(fake.cells["sample_id"]) - want
    assert set(pd.read_csv(Path(cfg.task.folds_dir) / FOLDS_CSV, dtype=str)["sample_id"]) == kept
    assert "1 id(s) of the authors' list are not in this data: ['2_095_10']" in caplog.text


def test_invalid_rule_authors_needs_their_list(prepared):
    cfg = prepared(folds=False)
    (Path(cfg.task.data.raw_dir) / "invalid_samples.csv").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="invalid_samples.csv"):
        prepared("task.data.invalid_rule=authors", "overwrite=true", folds=False)
    with pytest.raises(ValueError, match="invalid_rule must be one of"):
        prepared("task.data.invalid_rule=nonsense", "overwrite=true", folds=False)


def runner_cfg(make_cfg, fake, *overrides: str):
    return make_cfg(
        "task=sipakmed",
        "task.data.fetch_authors_invalid=false",
        f"paths.sipakmed_mirror={fake.out_dir}",
        "stages=[download,preprocess,folds]",
        *overrides,
    )


def test_folds_of_another_sample_set_are_refused(make_cfg, fake):
    cfg = runner_cfg(make_cfg, fake)
    run_stages(cfg)
    write_authors_list(cfg, [fake.invalid_ids[0]])
    run_stages(runner_cfg(make_cfg, fake, "task.data.invalid_rule=authors", "stages=[preprocess]", "overwrite=true"))
    # folds.csv was made for the contour rule's sample set: neither reused nor read by training.
    with pytest.raises(StageError, match=r"stage 'folds'.*task.data.invalid_rule: 'contour' -> 'authors'"):
        run_stages(runner_cfg(make_cfg, fake, "task.data.invalid_rule=authors", "stages=[folds]"))
    with pytest.raises(StageError, match=r"outputs of stage 'folds'.*invalid_rule"):
        run_stages(runner_cfg(make_cfg, fake, "task.data.invalid_rule=authors", "stages=[train]"))


def test_preprocess_is_skipped_when_done_unless_overwrite(make_cfg, fake):
    cfg = runner_cfg(make_cfg, fake)
    assert run_stages(cfg) == ["download", "preprocess", "folds"]
    path = Path(cfg.task.processed_dir) / IMAGES_NPY
    os.utime(path, (1, 1))
    assert run_stages(cfg) == []
    assert path.stat().st_mtime == 1
    cfg.overwrite = True
    assert run_stages(cfg) == ["download", "preprocess", "folds"]
    assert path.stat().st_mtime > 1


def test_variants_are_not_materialised(prepared):
    """The cache does not grow with the number of variants; only the small table does."""
    few = prepared("task.data.n_variants=2", folds=False)
    size_few = (Path(few.task.processed_dir) / IMAGES_NPY).stat().st_size
    many = prepared("task.data.n_variants=200", "overwrite=true", folds=False)
    out = Path(many.task.processed_dir)
    assert (out / IMAGES_NPY).stat().st_size == size_few
    assert len(pd.read_csv(out / VARIANTS_CSV)) == 200 * (N_CELLS - N_INVALID)


def test_polygon_centroid_option_changes_the_centres(prepared):
    cfg = prepared("task.data.centre=polygon_centroid", folds=False)
    samples = pd.read_csv(Path(cfg.task.processed_dir) / SAMPLES_CSV)
    cache = read_cache(Path(cfg.task.processed_dir))
    np.testing.assert_allclose(samples[["centre_x", "centre_y"]], cache["centre_polygon_centroid"])
    assert not np.allclose(cache["centre_polygon_centroid"], cache["centre_vertex_mean"])


def test_norm_stats_option(prepared):
    cfg = prepared("task.data.norm_stats=resized", folds=False)
    out = Path(cfg.task.processed_dir)
    cache, images = read_cache(out), np.load(out / IMAGES_NPY)
    top, left, h, w = cache["box"][0]
    inside = images[0, :, top : top + h, left : left + w].astype(float)
    assert cache["mean"][0] == pytest.approx(inside.mean(), abs=0.5)
    assert cache["std"][0] == pytest.approx(inside.std(), rel=0.01)


# ------------------------------------------------------------------ folds


def test_folds_csv_has_both_groupings(prepared):
    cfg = prepared()
    out = Path(cfg.task.processed_dir)
    folds = pd.read_csv(Path(cfg.task.folds_dir) / FOLDS_CSV, dtype=str)
    assert list(folds.columns) == ["sample_id", "slide", "fold_cell", "fold_slide"]
    ids = sorted(pd.read_csv(out / SAMPLES_CSV, dtype=str)["sample_id"])
    assert list(folds["sample_id"]) == ids
    expected = sipakmed_folds(ids, 5, 42, "cell")
    assert [int(f) for f in folds["fold_cell"]] == [expected[i] for i in ids]
    # slide grouping: no slide is split across folds
    assert (folds.groupby("slide")["fold_slide"].nunique() == 1).all()


def test_folds_need_the_preprocess_stage(make_cfg):
    with pytest.raises(FileNotFoundError, match="preprocess"):
        call_stage(make_cfg("task=sipakmed"), "folds")
