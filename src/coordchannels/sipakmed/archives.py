"""The SiPaKMeD download stage: the isolated cells of the five class archives, and nothing else,
into `<raw_dir>/cropped/<Class>/NNN_MM.bmp` + `NNN_MM_nuc.dat`, plus the authors' invalid list.

The source publishes only the archives' sizes: they are size-checked, then pinned by SHA-256 in a
lock file. Only the cropped cells are extracted, with py7zr, or the 7-Zip program for codecs
py7zr lacks.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

import py7zr
from omegaconf import DictConfig, OmegaConf

from coordchannels import download
from coordchannels.io import atomic_dir, write_text
from coordchannels.sipakmed.cells import CLASSES
from coordchannels.stages import StageContext

log = logging.getLogger(__name__)

# Cell files inside a CROPPED folder: NNN_MM.bmp and its nucleus contour NNN_MM_nuc.dat.
CELL_BMP = re.compile(r"(\d+_\d+)\.bmp", re.IGNORECASE)
CELL_NUC = re.compile(r"(\d+_\d+)_nuc\.dat", re.IGNORECASE)
# Layout under task.data.raw_dir.
CROPPED = "cropped"
AUTHORS_INVALID_CSV = "invalid_samples.csv"
SIPAKMED_LOCK = "sipakmed_archives.lock.json"
SOURCES_JSON = ".sources.json"  # hidden: not part of the data (nor of its checksums)


# --------------------------------------------------------------------------------------------
# Finding and extracting the cropped cells
# --------------------------------------------------------------------------------------------


def class_of(parts: tuple[str, ...]) -> str | None:
    """The class named by the innermost folder `<Class>` or `im_<Class>` among `parts`, if any."""
    names = {c.lower(): c for c in CLASSES} | {f"im_{c}".lower(): c for c in CLASSES}
    for part in reversed(parts):
        if part.lower() in names:
            return names[part.lower()]
    return None


def cell_file_kind(name: str) -> tuple[str, str] | None:
    """('bmp' | 'nuc', 'NNN_MM') for a cropped cell's image or nucleus contour, else None."""
    for kind, pattern in (("bmp", CELL_BMP), ("nuc", CELL_NUC)):
        match = pattern.fullmatch(name)
        if match:
            return kind, match.group(1)
    return None


def canonical_name(name: str) -> str:
    """`001_01.BMP` -> `001_01.bmp`: one spelling in the raw layout whatever the source used."""
    kind, stem = cell_file_kind(name)
    return f"{stem}.bmp" if kind == "bmp" else f"{stem}_nuc.dat"


def find_cropped_dirs(root: str | Path) -> dict[str, Path]:
    """Class -> its CROPPED folder, found at any depth under `root`.

    Copies in the wild nest it differently (`im_X/im_X/CROPPED`, `im_X/CROPPED`, `X/CROPPED`); the
    class is the innermost enclosing folder named `X` or `im_X`. Several CROPPED folders for one
    class, or a class without one, is an error naming what was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SiPaKMeD folder {root} does not exist")
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir() and path.name.lower() == "cropped":
            cls = class_of(path.relative_to(root).parts[:-1])
            if cls is None:
                log.warning("ignoring %s: no enclosing class folder (im_<Class>)", path)
                continue
            found.setdefault(cls, []).append(path)
    several = {c: [str(p) for p in ps] for c, ps in found.items() if len(ps) > 1}
    if several:
        raise ValueError(f"{root}: more than one CROPPED folder for a class: {several}")
    missing = [c for c in CLASSES if c not in found]
    if missing:
        raise FileNotFoundError(
            f"{root}: no CROPPED folder for class(es) {missing} "
            f"(found: {sorted(found)}); expected e.g. im_{missing[0]}/CROPPED/"
        )
    return {c: found[c][0] for c in CLASSES}


def has_cropped_tree(root: str | Path) -> bool:
    """Whether `root` holds at least one CROPPED folder (an extracted SiPaKMeD tree)."""
    root = Path(root)
    return root.is_dir() and any(p.is_dir() and p.name.lower() == "cropped" for p in root.rglob("*"))


def archive_class(archive: Path) -> str:
    """`im_Parabasal.7z` -> `Parabasal`; any other name is an error."""
    cls = class_of((archive.name.removesuffix(".7z"),))
    if cls is None or not archive.name.endswith(".7z"):
        raise ValueError(f"{archive}: not one of the SiPaKMeD archives {[f'im_{c}.7z' for c in CLASSES]}")
    return cls


def cropped_members(names: list[str]) -> list[str]:
    """The archive members that are cropped cells' images or nucleus contours (inside a CROPPED folder)."""
    keep = []
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if len(parts) > 1 and "cropped" in (p.lower() for p in parts[:-1]) and cell_file_kind(parts[-1]):
            keep.append(name)
    return keep


def extract_cropped(archive: str | Path, dest: str | Path) -> int:
    """Extract only the CROPPED cells' `.bmp` and `_nuc.dat` of one class archive into `dest` (flat).

    Returns the number of files written. Full-slide images and `_cyt.dat` contours are left in
    the archive: they are most of its 1-1.4 GB and the task never reads them. py7zr reads the
    archive; where it lacks the archive's codec (it has no BCJ2, for one), the 7-Zip program
    (`7z`, `7zz` or `7za` on the PATH) does the same job.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        return _extract_cropped_with(archive, dest, _py7zr_names, _py7zr_extract)
    except py7zr.exceptions.Bad7zFile as err:
        raise ValueError(f"{archive}: not a readable 7z archive ({err})") from err
    except py7zr.exceptions.UnsupportedCompressionMethodError as err:
        program = seven_zip_program()
        if program is None:
            raise ValueError(
                f"{archive}: py7zr cannot decode its compression ({err}) and no 7-Zip program "
                f"({', '.join(SEVEN_ZIP_PROGRAMS)}) is on the PATH; install 7-Zip, or extract the "
                "archives yourself (`7z x <archive>`) and pass the extracted folder as "
                "SIPAKMED_DIR (paths.sipakmed_mirror)"
            ) from err
        log.warning("%s: py7zr cannot decode it (%s); extracting with %s", archive, err, program)
        return _extract_cropped_with(
            archive,
            dest,
            lambda a: _program_names(program, a),
            lambda a, members, out: _program_extract(program, a, members, out),
        )


def _extract_cropped_with(archive: Path, dest: Path, names_of, extract) -> int:
    """The cropped cells of `archive`, listed by `names_of(archive)` and extracted by
    `extract(archive, members, folder)` into a temporary folder, moved flat into `dest`."""
    members = cropped_members(names_of(archive))
    if not members:
        raise ValueError(f"{archive}: no CROPPED/NNN_MM.bmp or _nuc.dat members; is it a SiPaKMeD archive?")
    basenames = [PurePosixPath(m.replace("\\", "/")).name for m in members]
    twice = sorted({b for b in basenames if basenames.count(b) > 1})
    if twice:
        raise ValueError(f"{archive}: cell files found in more than one CROPPED folder: {twice[:5]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".extract.") as tmp:
        extract(archive, members, Path(tmp))
        dest.mkdir(parents=True, exist_ok=True)
        for member, base in zip(members, basenames):
            shutil.move(Path(tmp) / member, dest / canonical_name(base))
    return len(members)


def _py7zr_names(archive: Path) -> list[str]:
    with py7zr.SevenZipFile(archive, "r") as z:
        return z.getnames()


def _py7zr_extract(archive: Path, members: list[str], out: Path) -> None:
    with py7zr.SevenZipFile(archive, "r") as z:
        z.extract(path=out, targets=members)


# 7-Zip's command-line programs (7-Zip, its standalone build, p7zip), in order of preference.
SEVEN_ZIP_PROGRAMS = ("7z", "7zz", "7za")


def seven_zip_program() -> str | None:
    return next((path for name in SEVEN_ZIP_PROGRAMS if (path := shutil.which(name))), None)


def _run_program(cmd: list[str], archive: Path) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ValueError(
            f"{archive}: `{' '.join(cmd)}` failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-500:]}"
        )
    return result.stdout


def _program_names(program: str, archive: Path) -> list[str]:
    """Member paths from `7z l -slt`: after the archive's own block, a `----------` line, then
    one `Path = ...` per member."""
    listing = _run_program([program, "l", "-slt", str(archive)], archive)
    members = listing.split("\n----------\n", 1)[-1]
    return [line[len("Path = ") :] for line in members.splitlines() if line.startswith("Path = ")]


def _program_extract(program: str, archive: Path, members: list[str], out: Path) -> None:
    """`7z x` of exactly `members` (a list file: thousands of names do not fit a command line)."""
    listfile = out / ".members.txt"
    listfile.write_text("".join(f"{m}\n" for m in members), encoding="utf-8")
    _run_program([program, "x", "-y", "-scsUTF-8", f"-o{out}", str(archive), f"@{listfile}"], archive)
    listfile.unlink()


def copy_cropped(src: Path, dest: Path, sources: dict[str, str] | None = None) -> int:
    """Copy a CROPPED folder's cell images and nucleus contours into `dest`; return the count.
    `sources`, when given, receives {copy's name: original path} for every file."""
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in sorted(src.iterdir()):
        if path.is_file() and cell_file_kind(path.name):
            shutil.copyfile(path, dest / canonical_name(path.name))
            if sources is not None:
                sources[f"{dest.name}/{canonical_name(path.name)}"] = str(path)
            n += 1
    return n


def write_sources(cropped: Path, sources: dict[str, str]) -> None:
    """`cropped/.sources.json`: where each copied file (or each class folder) came from, so that an
    error about a copy names the user's own file."""
    write_text(cropped / SOURCES_JSON, json.dumps(dict(sorted(sources.items())), indent=1) + "\n")


def origin(path: Path) -> str | None:
    """The original of a file under `cropped/` (a mirror file, or `archive: member`), when known."""
    cropped = path.parent.parent
    table = cropped / SOURCES_JSON
    if not table.is_file():
        return None
    sources = json.loads(table.read_text())
    key = f"{path.parent.name}/{path.name}"
    if key in sources:
        return sources[key]
    return f"{sources[path.parent.name]}: {path.name}" if path.parent.name in sources else None


def cropped_ready(folder: Path) -> bool:
    return all((folder / cls).is_dir() for cls in CLASSES)


def download_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """`<ctx.out>/cropped/<Class>/` with every cell's `.bmp` and `_nuc.dat` (`ctx.out` = task.data.raw_dir).

    Source, in order: an extracted tree in `task.data.mirror` (CROPPED folders at any depth;
    Make variable SIPAKMED_DIR), else the five archives (read in place from the mirror or
    downloaded, verified by `download.sipakmed_archives`) from which only the cropped cells are
    extracted.
    The folder is built beside its final place and renamed when complete.
    """
    data = cfg.task.data
    mirror = Path(data.mirror) if data.get("mirror") else None
    sources: dict[str, str] = {}
    archives = []
    with atomic_dir(ctx.out / CROPPED) as tmp:
        if mirror is not None and has_cropped_tree(mirror):
            for cls, folder in find_cropped_dirs(mirror).items():
                n = copy_cropped(folder, tmp / cls, sources)
                log.info("download: %s: %d files copied from %s", cls, n, folder)
        else:
            archives = sipakmed_archives(cfg)
            if not archives:
                raise FileNotFoundError(
                    f"SiPaKMeD mirror {mirror} holds neither the five archives "
                    f"im_<Class>.7z nor an extracted tree with CROPPED folders"
                )
            for archive in archives:
                cls = archive_class(Path(archive))
                n = extract_cropped(archive, tmp / cls)
                sources[cls] = str(archive)
                log.info("download: %s: %d files extracted from %s", cls, n, archive)
        if not cropped_ready(tmp):
            raise FileNotFoundError(f"SiPaKMeD source lacks class(es) {[c for c in CLASSES if not (tmp / c).is_dir()]}")
        write_sources(tmp, sources)
        if archives:
            # Pinned only now that every archive extracted: a right-sized archive that is not a
            # SiPaKMeD archive must not be locked in, or its good replacement would be refused.
            download.check_or_record_lock(archives, Path(data.raw_dir) / SIPAKMED_LOCK)


def download_outputs(cfg: DictConfig) -> list[str]:
    """The download stage's declared outputs: one folder of cells per class."""
    return [f"{CROPPED}/{cls}" for cls in CLASSES]


def authors_list_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """The authors' invalid_samples.csv into `ctx.out`, when `task.data.fetch_authors_invalid`.

    Report-only (preprocess compares it with the contour rule, or takes its ids with
    invalid_rule=authors): a failure to get it is a warning, and the next run tries again.
    """
    if not cfg.task.data.get("fetch_authors_invalid", True):
        log.info("authors_list: task.data.fetch_authors_invalid=false, not fetched")
        return
    try:
        path = invalid_samples(cfg)
        log.info("authors_list: the authors' invalid-sample list is %s", path)
    except (download.DownloadError, OSError) as err:
        log.warning(
            "authors_list: the authors' invalid-sample list is unavailable (%s); set "
            "paths.invalid_samples_mirror to a local copy to compare with it",
            err,
        )


def invalid_samples(cfg: DictConfig) -> Path:
    """The authors' list of invalid SiPaKMeD samples as `<raw_dir>/invalid_samples.csv`, verified."""
    name = "invalid_samples.csv"
    dest = Path(cfg.task.data.raw_dir) / name
    sha256 = download.registry("invalid_samples")[name]
    if dest.exists() and download._verifies(dest, sha256, None):
        return dest
    if dest.exists() and not cfg.overwrite:
        download.verify_file(
            dest,
            sha256=sha256,
            label=f"existing file {dest}",
            advice="Delete it and re-run (or run with overwrite=true) to fetch a fresh copy.",
        )
    dest.unlink(missing_ok=True)
    mirror = OmegaConf.select(cfg, "paths.invalid_samples_mirror")
    if mirror:
        return download.copy_from_mirror(Path(mirror), dest, sha256=sha256)
    with download.local_copy_hint("invalid_samples"):
        return download.fetch(
            cfg.sources.invalid_samples_url, dest, sha256=sha256, progress=False, **download.network_settings(cfg)
        )


def sipakmed_archives(cfg: DictConfig) -> list[Path]:
    """The five SiPaKMeD 7z archives, verified; return their paths.

    The source publishes only sizes, so archives are checked by size, then pinned by SHA-256 in
    `<raw_dir>/sipakmed_archives.lock.json` on the first complete download and checked against it
    on every later run. Source: `cfg.task.data.mirror` when set (a folder holding the archives:
    they are verified and read where they are, not copied, as they are 5 GB), else
    `cfg.task.data.url` into `raw_dir` (slow server: resumable, retried). A mirror that holds none
    of the archives is taken to be an already extracted tree: nothing is downloaded and [] is
    returned; one that holds only some of them is an error naming the missing archive.
    """
    data = cfg.task.data
    sizes = download.registry("sipakmed_archives")
    mirror = download.mirror_setting(cfg, "task.data.mirror")
    if mirror is not None and not any((mirror / name).is_file() for name in sizes):
        log.info("SiPaKMeD mirror %s holds no archives (an extracted tree?): nothing to download", mirror)
        return []
    if mirror is not None:
        paths = [download.mirror_file(mirror / name, size=size) for name, size in sizes.items()]
    else:
        with download.local_copy_hint("sipakmed"):
            paths = [
                download.obtain(
                    name,
                    data.raw_dir,
                    base_url=data.url,
                    size=size,
                    replace_bad=bool(cfg.overwrite),
                    **download.network_settings(cfg),
                )
                for name, size in sizes.items()
            ]
    log.info(
        "SiPaKMeD: checking %d archives against the lock file (SHA-256 of %.1f GB)",
        len(paths),
        sum(sizes.values()) / 1e9,
    )
    # The lock lives in raw_dir even for a mirror: a user's folder may be read-only or shared.
    # Checked against archives pinned earlier; new ones are pinned after they extract (download_stage).
    download.check_or_record_lock(paths, Path(data.raw_dir) / SIPAKMED_LOCK, record=False)
    return paths
