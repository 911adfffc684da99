"""The machine and software a number was measured on: one collector for the run manifest and the
benchmarks, so every report names its hardware the same way."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "wfdb",
    "pillow",
    "hydra-core",
    "omegaconf",
    "matplotlib",
    "py7zr",
    "requests",
    "tqdm",
    "coordchannels",
)


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        if names:
            return names[0]
    return platform.processor() or platform.machine()


def hardware(device: torch.device | str | None = None) -> dict:
    """CPU, cores, memory, torch threads; with CUDA, the GPU, its driver and the CUDA version.
    `device_name` names the device the numbers were measured on (the GPU, or the CPU)."""
    info = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        info["memory_gib"] = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        index = torch.device(device).index or 0 if device is not None and torch.device(device).type == "cuda" else 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["cuda_version"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)
        info["driver"] = _nvidia_driver()
    on_gpu = device is not None and torch.device(device).type == "cuda"
    info["device"] = str(device) if device is not None else ("cuda" if info["cuda"] else "cpu")
    info["device_name"] = info["gpu"] if on_gpu else f"CPU ({info['cpu']})"
    return info


def _nvidia_driver() -> str | None:
    version = Path("/proc/driver/nvidia/version")
    if version.exists():
        first = version.read_text().splitlines()[0]
        words = [w for w in first.split() if w[:1].isdigit() and "." in w]
        return words[0] if words else first
    return None
