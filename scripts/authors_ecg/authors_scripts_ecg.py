"""Run the authors' public ECG scripts, minimally patched, on a local VFDB (issue 16).

The authors' code is never stored in this project: this script fetches it at run time (a git
clone of their repository at pinned commits) into a scratch folder, applies the explicit text
substitutions listed in ``PATCHES`` (each must match exactly the stated number of times, or the
run stops), and runs it with the interpreter that runs this script (the project's pinned
``.venv``). Stages, each skipped when its output exists (so a killed run resumes):

  fetch      clone the repository, write the four/five scripts at their pinned commits
  extract    ecg_signal_extraction.py   -> <work>/danger_windows_refined_padded/
  augment    augmentation.py            -> <work>/danger_windows_augmented/
  structure  Dataset_structuring.py     -> <work>/ECG_5fold_dataset/{Study,Baseline}/fold_k.pt
  train      training_ecg_2.py (NimeshaNet) / training_ecg_1.py (reduced), one process per
             (model, arm, fold), one thread, one job at a time -> <work>/train_logs/model_{2,1}/
  convert    their logs -> <logs-out>/<Model>/{control,study}_set_fold_{k}_log.csv

Example (from the repository root)::

  .venv/bin/python scripts/authors_ecg/authors_scripts_ecg.py --vfdb <VFDB folder> \
      --work scratch/authors_ecg --logs-out scratch/authors_ecg/fold_logs

Their training script on OUR data (the crossed run of issue 16): ``--our-data data/processed/ecg
--work scratch/authors_ecg_ourdata --stages fetch structure train convert``; the structure stage
then writes our augmented signals, targets and folds in their fold format instead of running
their structuring script.

Wall times of every stage and job are appended to ``<work>/timings.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_REPO = "https://github.com/vittal2026/Signal_Intensity-Weighted_Coordinate_Channels"
DATASET_COMMIT = "da2ce6e6935d93217949de132f366a027d645940"  # branch ECG-dataset
TRAINING_COMMIT = "6511dcbaeee4b4eef35892ed36b7735883d49488"  # branch ECG-changepoint-localisation-task-training

SCRIPTS = {  # file -> commit it is taken from
    "ecg_signal_extraction.py": DATASET_COMMIT,
    "augmentation.py": DATASET_COMMIT,
    "Dataset_structuring.py": DATASET_COMMIT,
    "training_ecg_2.py": TRAINING_COMMIT,
    "training_ecg_1.py": TRAINING_COMMIT,
}

# Their model scripts and the names of the published log folders.
MODELS = {
    "nimeshanet": ("training_ecg_2.py", "model_2", "NimeshaNet"),
    "reduced_nimeshanet": ("training_ecg_1.py", "model_1", "Reduced Parameter NimeshaNet"),
}
ARMS = {"control": "Baseline", "study": "Study"}  # our arm name -> their dataset folder

# Placeholders filled in at run time (absolute paths inside the work folder).
WIN, AUG, DS, TLOG, TMOD = "{windows}", "{augmented}", "{dataset}", "{train_logs}", "{models}"


class PatchError(RuntimeError):
    """A listed substitution did not match the expected number of times."""


def patches(vfdb: str) -> dict[str, list[tuple[str, str, int, str]]]:
    """Every change applied to their scripts: file -> [(old, new, expected count, why)].

    Strings are matched literally. ``new`` may contain the placeholders above.
    """
    train_common = [
        ("num_workers=4", "num_workers=0", 1, "train DataLoader: no worker processes"),
        ("num_workers=2", "num_workers=0", 1, "test DataLoader: no worker processes"),
    ]
    return {
        "ecg_signal_extraction.py": [
            (
                'data_dir = r"C:\\Users\\User\\Desktop\\mit-bih-malignant-ventricular-ectopy-database-1.0.0'
                '\\mit-bih-malignant-ventricular-ectopy-database-1.0.0"',
                f"data_dir = {vfdb!r}",
                1,
                "hard-coded path: VFDB input",
            ),
            (
                'output_dir = r"C:\\Users\\User\\Desktop\\danger_windows_refined_padded"',
                f"output_dir = {WIN!r}",
                1,
                "hard-coded path: episode windows output",
            ),
        ],
        "augmentation.py": [
            (
                "from scipy import signal\n",
                "from scipy import signal\nnp.random.seed(42)\n",
                1,
                "seed the (otherwise unseeded) global NumPy stream right after the imports",
            ),
            (
                'input_dir = r"C:\\Users\\User\\Desktop\\danger_windows_refined_padded"',
                f"input_dir = {WIN!r}",
                1,
                "hard-coded path: episode windows input",
            ),
            (
                'output_dir = r"C:\\Users\\User\\Desktop\\danger_windows_augmented"',
                f"output_dir = {AUG!r}",
                1,
                "hard-coded path: augmented output",
            ),
        ],
        "Dataset_structuring.py": [
            (
                'aug_dir = r"C:\\Users\\User\\Desktop\\danger_windows_augmented"',
                f"aug_dir = {AUG!r}",
                1,
                "hard-coded path: augmented input",
            ),
            (
                'output_dir = r"C:\\Users\\User\\Desktop\\ECG_5fold_dataset"',
                f"output_dir = {DS!r}",
                1,
                "hard-coded path: fold dataset output",
            ),
        ],
        "training_ecg_2.py": [
            (
                'Path("/home/bsmse2/CNN_project/data/ecg_data")',
                f"Path({DS!r})",
                1,
                "hard-coded path: fold dataset input",
            ),
            (
                'Path("/home/bsmse2/CNN_project/logs/ecg_logs/model_2")',
                f"Path({TLOG + '/model_2'!r})",
                1,
                "hard-coded path: log output",
            ),
            (
                'Path("/home/bsmse2/CNN_project/models/ecg/model_2")',
                f"Path({TMOD + '/model_2'!r})",
                1,
                "hard-coded path: model output",
            ),
        ]
        + train_common,
        "training_ecg_1.py": [
            (
                'Path("/home/bsmse2/CNN_project/data/ecg_data")',
                f"Path({DS!r})",
                1,
                "hard-coded path: fold dataset input",
            ),
            (
                'Path("/home/bsmse2/CNN_project/logs/ecg_logs/model_1")',
                f"Path({TLOG + '/model_1'!r})",
                1,
                "hard-coded path: log output",
            ),
            (
                'Path("/home/bsmse2/CNN_project/models/ecg/model_1")',
                f"Path({TMOD + '/model_1'!r})",
                1,
                "hard-coded path: model output",
            ),
        ]
        + train_common,
    }


def apply_patches(
    text: str, subs: list[tuple[str, str, int, str]], fill: dict[str, str] | None = None, name: str = ""
) -> str:
    """Apply literal substitutions; raise PatchError unless each matches exactly `count` times."""
    for old, new, count, why in subs:
        found = text.count(old)
        if found != count:
            raise PatchError(f"{name}: expected {count} match(es) of {old!r} ({why}), found {found}")
        for key, value in (fill or {}).items():
            new = new.replace(key, value)
        text = text.replace(old, new)
    return text


def our_data_in_their_format(processed: Path, out: Path) -> None:
    """scripts/authors_ecg/compare_authors_ecg.py's export of our data in their fold format (the crossed run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare_authors_ecg", Path(__file__).with_name("compare_authors_ecg.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.export_theirs(processed, out)


def convert_log(src: Path, dst: Path) -> None:
    """Their per-job log (epoch,train_r2,test_r2) -> the published layout (same columns)."""
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"epoch", "train_r2", "test_r2"}:
        raise ValueError(f"{src}: unexpected columns {list(rows[0]) if rows else 'none'}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_r2", "test_r2"])
        for r in rows:
            w.writerow([int(r["epoch"]), repr(float(r["train_r2"])), repr(float(r["test_r2"]))])


def their_log_name(arm: str, fold: int) -> str:
    return f"{ARMS[arm]}_fold_{fold}_log.csv"


def published_log_name(arm: str, fold: int) -> str:
    return f"{arm}_set_fold_{fold}_log.csv"


# --------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, args):
        self.a = args
        self.work = Path(args.work).resolve()
        self.src = self.work / "scripts"
        self.dirs = {
            WIN: self.work / "danger_windows_refined_padded",
            AUG: self.work / "danger_windows_augmented",
            DS: self.work / "ECG_5fold_dataset",
            TLOG: self.work / "train_logs",
            TMOD: self.work / "train_models",
        }
        self.fill = {k: str(v) for k, v in self.dirs.items()}
        self.env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            TQDM_DISABLE="1",
            PYTHONUNBUFFERED="1",
        )

    def log(self, msg):
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}", flush=True)

    def timing(self, what, seconds, status="ok"):
        path = self.work / "timings.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["what", "wall_s", "status", "finished_utc"])
            w.writerow([what, f"{seconds:.1f}", status, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())])

    def run_py(self, script, what, extra=(), logfile=None):
        cmd = [self.a.python, str(self.src / script), *extra]
        self.log(f"start {what}: {' '.join(cmd)}")
        t0 = time.time()
        out = open(logfile, "w") if logfile else None
        try:
            rc = subprocess.call(
                cmd, cwd=self.src, env=self.env, stdout=out or None, stderr=subprocess.STDOUT if out else None
            )
        finally:
            if out:
                out.close()
        dt = time.time() - t0
        self.timing(what, dt, "ok" if rc == 0 else f"rc={rc}")
        if rc != 0:
            raise SystemExit(f"{what} failed with exit status {rc}" + (f"; see {logfile}" if logfile else ""))
        self.log(f"done {what} in {dt:.0f} s")

    # -- stages --------------------------------------------------------------------------
    def fetch(self):
        clone = self.work / "repo.git"
        if not clone.exists():
            self.log(f"cloning {self.a.repo}")
            subprocess.check_call(["git", "clone", "--bare", "--quiet", self.a.repo, str(clone)])
        self.src.mkdir(parents=True, exist_ok=True)
        subs = patches(str(Path(self.a.vfdb).resolve()))
        for name, commit in SCRIPTS.items():
            text = subprocess.check_output(["git", "--git-dir", str(clone), "show", f"{commit}:{name}"], text=True)
            (self.src / (name + ".orig")).write_text(text)
            (self.src / name).write_text(apply_patches(text, subs[name], self.fill, name))
        self.log(f"scripts patched in {self.src}")

    def extract(self):
        if (self.dirs[WIN] / "episodes_log.csv").exists():
            return self.log("extract: done before, skipped")
        self.run_py("ecg_signal_extraction.py", "extract", logfile=self.work / "extract.log")

    def augment(self):
        if (self.dirs[AUG] / "augmented_windows_log.csv").exists():
            return self.log("augment: done before, skipped")
        self.run_py("augmentation.py", "augment", logfile=self.work / "augment.log")

    def structure(self):
        done = all((self.dirs[DS] / d / f"fold_{k}.pt").exists() for d in ARMS.values() for k in range(1, 6))
        if done and (self.dirs[DS] / "structure.done").exists():
            return self.log("structure: done before, skipped")
        if self.a.our_data:  # the crossed run: our augmented data and folds in their fold format
            t0 = time.time()
            our_data_in_their_format(Path(self.a.our_data), self.dirs[DS])
            return self.timing("structure (our data, exported)", time.time() - t0)
        self.run_py("Dataset_structuring.py", "structure", logfile=self.work / "structure.log")
        (self.dirs[DS] / "structure.done").write_text("ok\n")

    def jobs(self):
        for model in self.a.models:
            for arm in self.a.arms:
                for fold in self.a.folds:
                    yield model, arm, fold

    def train(self):
        for model, arm, fold in self.jobs():
            script, sub, _ = MODELS[model]
            out = self.dirs[TLOG] / sub / their_log_name(arm, fold)
            if out.exists():
                self.log(f"train {model} {arm} fold {fold}: done before, skipped")
                continue
            (self.work / "job_logs").mkdir(exist_ok=True)
            self.run_py(
                script,
                f"train {model} {arm} fold_{fold}",
                ["--dataset", ARMS[arm], "--test_fold", f"fold_{fold}"],
                logfile=self.work / "job_logs" / f"{model}_{arm}_fold_{fold}.log",
            )
            if self.a.logs_out:
                self.convert()

    def convert(self):
        if not self.a.logs_out:
            return
        root = Path(self.a.logs_out)
        n = 0
        for model, arm, fold in self.jobs():
            _, sub, published = MODELS[model]
            src = self.dirs[TLOG] / sub / their_log_name(arm, fold)
            if src.exists():
                convert_log(src, root / published / published_log_name(arm, fold))
                n += 1
        self.log(f"convert: {n} log(s) in {root}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=DEFAULT_REPO, help="the authors' repository: URL or local git dir")
    p.add_argument("--vfdb", default="data/raw/vfdb", help="folder with the VFDB records (NNN.hea/.dat/.atr)")
    p.add_argument("--work", default="scratch/authors_ecg", help="scratch folder (never commit it)")
    p.add_argument("--logs-out", default=None, help="root of the converted per-fold logs (published layout)")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs their scripts")
    p.add_argument(
        "--our-data",
        default=None,
        help="train their script on OUR processed ECG data (e.g. data/processed/ecg) instead of theirs: the "
        "structure stage exports it in their fold format; use its own --work folder",
    )
    p.add_argument("--models", nargs="+", default=["nimeshanet"], choices=list(MODELS))
    p.add_argument("--arms", nargs="+", default=["control", "study"], choices=list(ARMS))
    p.add_argument("--folds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument(
        "--stages",
        nargs="+",
        default=["fetch", "extract", "augment", "structure", "train", "convert"],
        choices=["fetch", "extract", "augment", "structure", "train", "convert"],
    )
    args = p.parse_args(argv)
    r = Runner(args)
    r.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for stage in args.stages:
        getattr(r, stage)()
    r.log(f"all requested stages finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
