#!/usr/bin/env python
"""SiPaKMeD data stages at full size: wall time, peak memory and disk against the number of variants.

Writes a generated SiPaKMeD (default: all 4049 cells) as the five 7z archives of the official
layout and times the extraction of their cropped cells (py7zr, `sipakmed.extract_cropped`); the
generated archives cannot pass the registry's sizes of the real ones, so the data stages then
take the extracted tree as their mirror. The stages (download = copy of the cells, preprocess,
folds) run once per `--variants` value, each in its own process, and per run the wall time,
the process's peak resident memory (VmHWM), and what the stages left on disk. The first
`--variants` value is the baseline the ratios are taken against: peak memory and the image cache
must stay flat as the number of augmented variants grows (only the small variant table grows),
where the authors' scripts wrote every variant (5 x 256 x 256 float32 per variant and arm).

Examples:
    python scripts/bench_sipakmed_preprocess.py                          # 4049 cells, variants 1 20 200
    python scripts/bench_sipakmed_preprocess.py --cells 500 --variants 20 --out results/benchmarks/sipakmed_preprocess_500.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coordchannels.environment import hardware
from coordchannels.io import write_text
from coordchannels.sipakmed.archives import archive_class, extract_cropped
from coordchannels.sipakmed.synthetic import make_fake_sipakmed
from coordchannels.tables import markdown_table

# Bytes the scripts' way stores per variant and arm: a 5 x 256 x 256 float32 tensor.
AUTHORS_BYTES_PER_VARIANT = 5 * 256 * 256 * 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=4049, help="generated cells (1..4049)")
    p.add_argument(
        "--variants",
        type=int,
        nargs="+",
        default=[1, 20, 200],
        help="task.data.n_variants values; the first is the baseline",
    )
    p.add_argument("--workdir", default=None, help="where data goes (default: a temporary folder, deleted)")
    p.add_argument("--out", default=None, help="write results to OUT (.json) and its .md sibling")
    return p.parse_args(argv)


def folder_bytes(folder: Path) -> dict[str, int]:
    """Bytes of every file directly in `folder` (stage logs excluded)."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def extract_all(archives: list[Path], tree: Path) -> dict:
    """Extract every archive's cropped cells into `tree/im_<Class>/CROPPED/`; time it."""
    start, files = time.perf_counter(), 0
    for archive in archives:
        files += extract_cropped(archive, tree / f"im_{archive_class(archive)}" / "CROPPED")
    return {"seconds": time.perf_counter() - start, "files": files}


# Runs the app and reports the peak resident memory of its own address space (VmHWM). Not
# ru_maxrss from wait4: Linux carries the pre-exec RSS of the forked child, i.e. this benchmark's
# own (the generated data set), into it.
CHILD = """
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    print(f"VmHWM_KiB={kib}", file=sys.stderr)
atexit.register(report)
sys.argv = ["coordchannels", *sys.argv[1:]]
runpy.run_module("coordchannels", run_name="__main__")
"""


def run_stages(root: Path, mirror: Path, n_variants: int, stages: str = "${task.data_stages}") -> dict:
    """The data stages in a fresh process; its wall time and peak resident memory."""
    if root.exists():
        raise FileExistsError(f"{root} exists: the data stages would skip their work; use an empty --workdir")
    args = [
        "task=sipakmed",
        f"stages={stages}",
        f"paths.root_dir={root}",
        f"paths.sipakmed_mirror={mirror}",
        "task.data.fetch_authors_invalid=false",
        f"task.data.n_variants={n_variants}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"data stages failed (n_variants={n_variants}):\n{proc.stderr[-3000:]}")
    kib = int(proc.stderr.rsplit("VmHWM_KiB=", 1)[1].split()[0])
    return {"seconds": seconds, "peak_rss_mb": kib / 1024}


def stage_seconds(root: Path) -> dict[str, float]:
    """Each stage's own wall time, from the timing files the pipeline writes beside outputs."""
    times = {}
    for path in root.rglob("logs/*.time.json"):
        runs = json.loads(path.read_text())
        times[path.name.removesuffix(".time.json")] = runs[-1]["seconds"]
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_sipakmed_preprocess.") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        archives, mirror = work / "archives", work / "extracted"
        start = time.perf_counter()
        info = make_fake_sipakmed(archives, args.cells, seed=0, archives=True)
        print(
            f"generated {len(info.cells)} cells ({len(info.invalid_ids)} invalid) in "
            f"{time.perf_counter() - start:.0f} s: {tree_bytes(archives) / 1e6:.0f} MB of archives"
        )
        extraction = extract_all(info.paths, mirror)
        print(f"extracted {extraction['files']} cell files in {extraction['seconds']:.1f} s")
        # The app with no stage: what Python, torch and the config alone take.
        startup = run_stages(work / "startup", mirror, args.variants[0], stages="[]")
        runs = []
        for k in args.variants:
            root = work / f"variants_{k}"
            measured = run_stages(root, mirror, k)
            processed = root / "data" / "processed" / "sipakmed"
            files = folder_bytes(processed)
            runs.append(
                {
                    "n_variants": k,
                    **measured,
                    "stage_seconds": stage_seconds(root),
                    "processed_mb": sum(files.values()) / 1e6,
                    "images_npy_mb": files["images.npy"] / 1e6,
                    "variants_csv_mb": files["variants.csv"] / 1e6,
                    "raw_cropped_mb": tree_bytes(root / "data" / "raw" / "sipakmed" / "cropped") / 1e6,
                    "n_images": sum(1 for _ in open(processed / "samples.csv")) - 1,
                }
            )
            print(f"n_variants={k}: {measured['seconds']:.0f} s, peak RSS {measured['peak_rss_mb']:.0f} MB")
    env = {**hardware(), "cells": args.cells}
    report = render(runs, env, extraction, startup)
    print(report)
    if args.out:
        out = Path(args.out)
        write_text(
            out.with_suffix(".json"),
            json.dumps({"env": env, "extraction": extraction, "startup": startup, "runs": runs}, indent=2) + "\n",
        )
        write_text(out.with_suffix(".md"), report + "\n")


def render(runs: list[dict], env: dict, extraction: dict, startup: dict) -> str:
    base = runs[0]
    lines = [
        f"SiPaKMeD data stages on {env['cells']} generated cells, {env['cpu_count']} cores, {env['platform']}",
        "",
        f"py7zr extraction of the cropped cells from the five archives: {extraction['files']} files in "
        f"{extraction['seconds']:.1f} s.",
        "",
    ]
    rows = []
    for r in runs:
        s = r["stage_seconds"]
        authors_gb = 2 * r["n_images"] * r["n_variants"] * AUTHORS_BYTES_PER_VARIANT / 1e9
        rows.append(
            [
                r["n_variants"],
                f"{r['seconds']:.0f}",
                f"{s.get('download', 0):.1f} / {s.get('preprocess', 0):.1f} / {s.get('folds', 0):.1f}",
                f"{r['peak_rss_mb']:.0f} ({r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x)",
                f"{r['images_npy_mb']:.0f}",
                f"{r['variants_csv_mb']:.1f}",
                f"{r['processed_mb']:.0f}",
                f"{authors_gb:.0f}",
            ]
        )
    header = [
        "n_variants",
        "wall s",
        "stages (download / preprocess / folds) s",
        "peak RSS MB (x baseline)",
        "images.npy MB",
        "variants.csv MB",
        "processed total MB",
        "authors' way, both arms GB",
    ]
    lines += [
        *markdown_table(header, rows),
        "",
        f"{base['n_images']} images kept; extracted cells (raw cropped/) {base['raw_cropped_mb']:.0f} MB. "
        "The authors' way: every variant as a 5 x 256 x 256 float32 file per arm (computed, not written).",
        f"The app started with no stage peaks at {startup['peak_rss_mb']:.0f} MB (Python, torch, config).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
