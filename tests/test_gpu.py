"""GPU-side correctness of the trainer (`make gpu-check`; marked `gpu`, skipped without CUDA).

Set COORDCHANNELS_TEST_DEVICE=cpu to run the same checks on a CPU (the logic, not the GPU).
Tolerances: a CUDA fp32 step and a CPU step sum in different orders, so they agree to about 1e-4
relative, not bitwise; a resumed CUDA job matches an uninterrupted one exactly when cuDNN runs
deterministically (train.deterministic=true, the default), which the test asserts.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from coordchannels import train
from tests.conftest import train_killed_after_epoch
from tests.helpers import fake_loader, job_log, read

DEVICE = os.environ.get("COORDCHANNELS_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]


def one_step(device: str, task: str, tiny) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and predictions of one Adam step from seed-42 weights on the same batch, on `device`."""
    cfg = tiny(task, f"train.device={device}")
    data = fake_loader(cfg, cfg.arms.study, torch.device(device))
    idx = torch.arange(16)
    model_name = "nimeshanet" if task == "ecg" else "lakshyanet"
    train.seed_everything(42)
    model = train.build_model(cfg.task.models[model_name], cfg.arms.study, data.n_channels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = data.targets(idx)
    mean, std = y.mean(0), y.std(0)
    loss, _ = train.train_step(model, optimizer, data.inputs(idx), y, mean, std, train.Execution(device_type=device))
    model.eval()
    with torch.no_grad():
        after = model(data.inputs(idx))
    return loss.cpu(), after.cpu()


@pytest.mark.parametrize("task", ["ecg", "sipakmed"])
def test_a_training_step_on_the_gpu_agrees_with_the_cpu(tiny_cfg, task):
    loss_gpu, pred_gpu = one_step(DEVICE, task, tiny_cfg)
    loss_cpu, pred_cpu = one_step("cpu", task, tiny_cfg)
    torch.testing.assert_close(loss_gpu, loss_cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred_gpu, pred_cpu, rtol=1e-4, atol=1e-4)


def test_a_killed_job_resumes_on_the_gpu_to_the_uninterrupted_log(tiny_cfg, monkeypatch):
    args = ("ecg", "train.models=[nimeshanet]", "train.arms=[study]", "train.epochs=4", f"train.device={DEVICE}")
    reference = tiny_cfg(*args, "train.run_name=ref")
    train.train_stage(reference)
    cfg = tiny_cfg(*args, "train.run_name=killed")
    train_killed_after_epoch(cfg, monkeypatch, epoch=2)
    train.train_stage(cfg)
    pd.testing.assert_frame_equal(read(job_log(cfg)), read(job_log(reference)), check_exact=True)


@pytest.mark.parametrize("first, then", [(DEVICE, "cpu"), ("cpu", DEVICE)])
def test_a_checkpoint_moves_between_gpu_and_cpu(tiny_cfg, monkeypatch, first, then):
    args = ("ecg", "train.models=[nimeshanet]", "train.arms=[study]", "train.epochs=4", "train.run_name=moved")
    started = tiny_cfg(*args, f"train.device={first}")
    train_killed_after_epoch(started, monkeypatch, epoch=2)
    finished = tiny_cfg(*args, f"train.device={then}")
    train.train_stage(finished)  # resumes the other device's checkpoint
    log = read(job_log(finished))
    assert log["epoch"].tolist() == [1, 2, 3, 4] and np.isfinite(log.to_numpy()).all()


def final_test_r2(tiny, *overrides: str) -> float:
    cfg = tiny(
        "sipakmed",
        "train.models=[lakshyanet]",
        "train.arms=[study]",
        "train.epochs=6",
        f"train.device={DEVICE}",
        *overrides,
    )
    train.train_stage(cfg)
    log = read(train.job_log_path(cfg, train.Job("lakshyanet", "study", int(cfg.train.seeds[0]), 1)))
    return float(log[["test_r2_h", "test_r2_k"]].iloc[-1].mean())


@pytest.mark.parametrize(
    "fast",
    [
        ["train.precision=bf16"],
        ["train.channels_last=true"],
        ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
    ],
    ids=["bf16", "channels_last", "bf16+cl+compile"],
)
def test_fast_paths_stay_within_seed_noise(tiny_cfg, fast):
    """Seed noise measured, not assumed: the spread of fp32 runs over three seeds bounds how far a
    fast path may move the final test R² of seed 42."""
    fp32 = {
        seed: final_test_r2(tiny_cfg, f"train.seeds=[{seed}]", f"train.run_name=fp32_{seed}") for seed in (42, 43, 44)
    }
    noise = max(fp32.values()) - min(fp32.values())
    other = final_test_r2(tiny_cfg, *fast, "train.run_name=fast")
    assert abs(other - fp32[42]) <= max(noise, 0.02), (other, fp32)
