"""Committed results checked against their manifests (`make verify`).

A result folder's `manifest.json` (written by the manifest stage) lists the SHA-256 of every file
of the folder under `files`: tables, figures and the per-fold logs they were computed from. Not
listed: the manifest itself, the folder's README.md (documentation), the stages' own `logs/`
(their logs, configs and records, partly written after the manifest) and subfolders that hold a
manifest of their own. `make verify` checks
every manifest under `paths.results_dir` and names each file that is missing, changed or not
listed; the statistics check a folder's logs the same way before reading them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from coordchannels.download import file_sha256
from coordchannels.entry import reports_errors

MANIFEST = "manifest.json"
# The stages' own records beside a result, not results: see the module docstring.
STAGE_LOGS = "logs"
# A folder's README says what made it and what it shows: documentation, edited by hand.
README = "README.md"


def result_files(folder: Path) -> list[Path]:
    """The files a manifest in `folder` covers (see the module docstring), sorted."""
    folder = Path(folder)
    own = [p.parent for p in folder.rglob(MANIFEST) if p.parent != folder]
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and p != folder / MANIFEST
        and p != folder / README
        and p.relative_to(folder).parts[0] != STAGE_LOGS
        and not any(p.is_relative_to(sub) for sub in own)
    )


def file_sums(folder: Path) -> dict[str, str]:
    """{path relative to `folder`: SHA-256} of the files a manifest in `folder` covers."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in result_files(folder)}


def check_files(folder: Path, recorded: dict[str, str], under: Path | None = None) -> list[str]:
    """One line per file of `folder` (or only those under `under`) that differs from `recorded`."""
    folder = Path(folder)
    scope = Path(under) if under is not None else folder

    def inside(name: str) -> bool:
        return (folder / name).is_relative_to(scope)

    present = {p.relative_to(folder).as_posix(): p for p in result_files(folder) if p.is_relative_to(scope)}
    problems = [f"{folder / name}: missing" for name in recorded if inside(name) and name not in present]
    for name, path in present.items():
        if name not in recorded:
            problems.append(f"{path}: not in {folder / MANIFEST}")
        elif file_sha256(path) != recorded[name]:
            problems.append(f"{path}: changed (SHA-256 differs from {folder / MANIFEST})")
    return sorted(problems)


def recorded_files(folder: Path) -> dict[str, str] | None:
    """The `files` of `folder`'s manifest; None when it has no manifest or one without checksums."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text()).get("files")
    except ValueError as exc:
        raise ValueError(f"{path}: unreadable manifest ({exc})") from exc
    return files if isinstance(files, dict) else None


def manifest_folder(path: Path, top: Path) -> Path | None:
    """The nearest folder from `path` up to `top` whose manifest lists its files, or None."""
    path, top = Path(path).resolve(), Path(top).resolve()
    for folder in [path, *path.parents]:
        if not folder.is_relative_to(top):
            return None
        if recorded_files(folder) is not None:
            return folder
    return None


def verify_results(results_dir: Path) -> tuple[list[str], int, list[Path]]:
    """(problems, files checked, result folders whose manifest has no checksums) under `results_dir`."""
    problems, checked, unchecked = [], 0, []
    for manifest in sorted(Path(results_dir).rglob(MANIFEST)):
        folder = manifest.parent
        recorded = recorded_files(folder)
        if recorded is None:
            unchecked.append(folder)
            continue
        problems += check_files(folder, recorded)
        checked += len(recorded)
    return problems, checked, unchecked


def unmanifested(results_dir: Path) -> list[Path]:
    """The top folders of `results_dir` holding files that no manifest covers."""
    results_dir = Path(results_dir)
    covered = {p for m in results_dir.rglob(MANIFEST) for p in [m, *m.parent.rglob("*")]}
    loose = {
        p.relative_to(results_dir).parts[0]
        for p in results_dir.rglob("*")
        if p.is_file() and p not in covered and p.parent != results_dir
    }
    return [results_dir / name for name in sorted(loose)]


def default_results_dir() -> Path:
    """paths.results_dir of the shipped paths config (relative to COORDCHANNELS_ROOT or here)."""
    from omegaconf import OmegaConf

    from coordchannels.components import CONF_DIR

    cfg = OmegaConf.create({"paths": OmegaConf.load(CONF_DIR / "paths" / "default.yaml")})
    return Path(str(cfg.paths.results_dir))


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results_dir = Path(args[0]) if args else default_results_dir()
    if not results_dir.is_dir():
        print(f"error: {results_dir} is not a folder (give the committed results folder)", file=sys.stderr)
        return 2
    problems, checked, unchecked = verify_results(results_dir)
    for folder in unchecked:
        print(f"verify: {folder / MANIFEST} lists no checksums: its folder is not verified")
    for folder in unmanifested(results_dir):
        print(f"verify: {folder} holds files no manifest covers: they are not verified")
    for line in problems:
        print(f"verify: {line}", file=sys.stderr)
    if problems:
        print(f"error: {len(problems)} committed result file(s) differ from their manifests", file=sys.stderr)
        return 1
    print(f"verify: {checked} committed result files under {results_dir} match their manifests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
