"""Verified downloads: every input file is checked against a known SHA-256 or size before use.

Two layers:

* generic pieces: `fetch` (HTTP, resumable, retried, verified), `mirror_file` (a file of a local
  mirror, used in place), `copy_from_mirror` (a local copy, verified), `obtain` (do nothing if the file is already there and verifies, else mirror or
  network), `check_or_record_lock` (pin the SHA-256 of files that are only known by size);
* the published_logs stage (the tasks' download stages live in their subpackages), and the helpers
  `invalid_samples` and `sipakmed_archives` used by the SiPaKMeD stages.

The expected checksums and sizes are facts shipped with the package in
`coordchannels/registry/` (see `registry`).

Policy for a file that is already present but does NOT verify: it is never silently replaced,
because it may be the user's own data put there on purpose. The functions raise `ChecksumError`
saying which file and how to fix it; `replace_bad=True` (the stages pass `cfg.overwrite`) deletes
it and fetches a fresh copy instead.

Why the download goes to `<dest>.part` rather than through `coordchannels.io.atomic_path`: a
stable temporary name is what makes a broken download resumable (the next run continues the same
`.part` with an HTTP Range request). The guarantee is the same: the finished name only appears, by
an atomic rename, after the content has been verified.

Time limits (`fetch`): each connection attempt waits at most `timeout` (default 10 s) to connect
and then for each piece of data; a file fails once no byte of it has arrived for `deadline`
(default 30 s) across attempts, or after `retries` more attempts (default 4). A download that
keeps receiving bytes, however slowly, is never cut off. A failure raises one `DownloadError`
whose message holds the short cause (no chained tracebacks); the stages add, as its last line,
how to use a local copy instead (`VFDB_DIR=`, `SIPAKMED_DIR=`, `PUBLISHED_LOGS_DIR=`). The
stages read these limits from the optional config keys `download.timeout`, `download.deadline`,
`download.retries` and `download.backoff` (e.g. `++download.deadline=120`), with the defaults
above.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import requests
import urllib3
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from coordchannels.io import atomic_path, file_sha256, write_text
from coordchannels.stages import StageContext

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB: small enough for a smooth progress bar, large enough to be fast
# Ask for the bytes as stored: a compressed transfer would make sizes and Range offsets refer to
# something other than the file on disk.
HEADERS = {"Accept-Encoding": "identity", "User-Agent": "coordchannels (research reproduction)"}
# HTTP statuses worth another try: the server is busy or failing, not saying "no".
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
# Network limits (see the module docstring): seconds to connect / between pieces of data, seconds
# without any byte of a file before it fails, further attempts, first wait between attempts.
TIMEOUT = 10.0
DEADLINE = 30.0
RETRIES = 4
BACKOFF = 1.0


class DownloadError(RuntimeError):
    """A file could not be obtained (network failure after all retries, HTTP error)."""


class ChecksumError(DownloadError):
    """A file's SHA-256 or size is not the expected one."""


class _RetryableError(Exception):
    """One attempt failed in a way that another attempt may fix (drop, busy server)."""


# --------------------------------------------------------------------------------------------
# Registry: the expected checksums and sizes shipped with the package.
# --------------------------------------------------------------------------------------------


def registry(name: str) -> dict:
    """The registry file `name`: `<name>.sha256` -> {file: sha256}, `<name>.json` -> its mapping.

    Checksum files use the `sha256sum` format, `<hash>  <name>`; the name is everything after the
    two spaces, so names with spaces (`Reduced Parameter NimeshaNet/...`) work. `#` lines are
    comments. `sipakmed_archives` (JSON) maps archive name -> size in bytes.
    """
    folder = resources.files("coordchannels") / "registry"
    for suffix, parse in ((".sha256", _parse_sha256sums), (".json", json.loads)):
        entry = folder / f"{name}{suffix}"
        if entry.is_file():
            return parse(entry.read_text())
    known = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    raise KeyError(f"no registry file named {name!r} in coordchannels/registry; known: {known}")


def _parse_sha256sums(text: str) -> dict[str, str]:
    sums = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"registry line {number} is not '<sha256>  <name>': {line!r}")
        sums[name.strip().lstrip("*")] = digest.lower()
    return sums


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def verify_file(
    path: Path, *, sha256: str | None = None, size: int | None = None, label: str | None = None, advice: str = ""
) -> None:
    """Raise ChecksumError unless `path` has the expected size and SHA-256 (those given).

    The size is checked first: it is free, and a wrong size makes hashing pointless.
    `label` is how the file is named in the message (e.g. its final name, not a temporary one).
    """
    label = label or str(path)
    if size is not None:
        actual_size = path.stat().st_size
        if actual_size != size:
            raise ChecksumError(f"{label}: size is {actual_size} bytes, expected {size}. {advice}".strip())
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise ChecksumError(f"{label}: SHA-256 is {actual}, expected {sha256.lower()}. {advice}".strip())


def _verifies(path: Path, sha256: str | None, size: int | None) -> bool:
    try:
        verify_file(path, sha256=sha256, size=size)
        return True
    except ChecksumError:
        return False


# --------------------------------------------------------------------------------------------
# HTTP download
# --------------------------------------------------------------------------------------------


class _Stall:
    """The clock of a file's `deadline`: seconds since the last byte arrived (or the start)."""

    def __init__(self, deadline: float):
        self.deadline = float(deadline)
        self.started = self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def left(self) -> float:
        return self.deadline - (time.monotonic() - self.last)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = RETRIES,
    backoff: float = BACKOFF,
    timeout: float = TIMEOUT,
    deadline: float = DEADLINE,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest`, resumably, and verify it; return `dest`.

    Bytes go to `<dest>.part`. An existing `.part` (from an interrupted run) is continued with an
    HTTP Range request; a server that ignores Range (200 instead of 206) makes it start over.
    Dropped connections, timeouts and busy-server statuses are retried up to `retries` more
    times, waiting backoff, 2*backoff, 4*backoff ... seconds, as long as the file has received a
    byte within the last `deadline` seconds; each attempt waits at most `timeout` seconds to
    connect and for each piece of data. Only once the size and/or SHA-256
    match is the `.part` renamed onto `dest`. On a mismatch the `.part` is deleted and
    ChecksumError raised, so a failed download never leaves a file that looks complete (when the
    bad bytes may come from a `.part` left by an earlier run, it first tries once from scratch).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    resumed = part.exists() and part.stat().st_size > 0
    stall = _Stall(deadline)
    with requests.Session() as session:
        session.headers.update(HEADERS)
        for attempt in range(retries + 1):
            try:
                _download_once(
                    session,
                    url,
                    part,
                    size=size,
                    timeout=max(0.01, min(timeout, stall.left())),
                    progress=progress,
                    stall=stall,
                )
                break
            except _RetryableError as err:
                wait = backoff * 2**attempt
                out_of_time = stall.left() <= wait
                if attempt == retries or out_of_time:
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    why = (
                        f"no data for {deadline:g} s, {tries}" if out_of_time else f"{tries} in {stall.elapsed():.0f} s"
                    )
                    kept = (
                        f" The partial file {part} is kept; re-run to resume it."
                        if part.exists() and part.stat().st_size
                        else ""
                    )
                    # One exception, its cause in the message: no chain of library tracebacks.
                    raise DownloadError(f"could not download {url}: {err} (gave up: {why}).{kept}") from None
                log.warning("%s: %s; retry %d/%d in %.2f s", dest.name, err, attempt + 1, retries, wait)
                time.sleep(wait)
    try:
        verify_file(
            part,
            sha256=sha256,
            size=size,
            label=f"download of {url}",
            advice=f"The partial file was deleted and nothing was written to {dest}. Re-run to "
            "fetch it again; if this repeats, the server holds a different file than "
            "the registry expects (check the URL or mirror).",
        )
    except ChecksumError:
        part.unlink(missing_ok=True)
        if resumed:  # the old .part may have come from another version of the file: one clean try
            log.warning("%s: resumed download does not verify; downloading it again from the start", dest.name)
            return fetch(
                url,
                dest,
                sha256=sha256,
                size=size,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                deadline=deadline,
                progress=progress,
            )
        raise
    os.replace(part, dest)
    return dest


def _short_cause(err: BaseException, timeout: float) -> str:
    """One line on why a request failed, without the library's nested exception reprs."""
    if isinstance(err, requests.ConnectTimeout):
        return f"no connection within {timeout:.3g} s (connect timeout)"
    if isinstance(err, requests.ReadTimeout):
        return f"connected, but the server sent nothing for {timeout:.3g} s (read timeout)"
    inner = err.args[0] if err.args and isinstance(err.args[0], BaseException) else err
    inner = getattr(inner, "reason", None) or inner  # urllib3's MaxRetryError wraps the real one
    text = re.sub(r"^<[^>]*>: ", "", str(inner))  # drop '<...Connection object at 0x...>: '
    return f"connection failed ({type(inner).__name__}: {text})"


def _download_once(
    session: requests.Session,
    url: str,
    part: Path,
    *,
    size: int | None,
    timeout: float,
    progress: bool,
    stall: _Stall | None = None,
) -> None:
    """One attempt: continue (or start) `part`; raise _RetryableError if it stops short."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # cannot be a prefix of the right file
        part.unlink()
        offset = 0
    if size is not None and offset == size:  # finished earlier, only the rename was missing
        return
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _RetryableError(_short_cause(err, timeout)) from None
    with response:
        offset = _start_offset(response, url, part, offset)
        total = _total_size(response, offset)
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"{url}: the server reports {total} bytes, the registry expects {size}. "
                "Nothing was downloaded; the server holds a different file (check the URL)."
            )
        _stream_to(response, part, offset, total, progress, stall, timeout)
    expected = total if total is not None else size
    got = part.stat().st_size
    if expected is not None and got < expected:
        raise _RetryableError(f"connection closed after {got} of {expected} bytes")


def _start_offset(response: requests.Response, url: str, part: Path, offset: int) -> int:
    """Where the response body starts in the file; check the status first."""
    status = response.status_code
    if status == 416 and offset:  # our .part is not a prefix the server can continue
        part.unlink(missing_ok=True)
        raise _RetryableError("server refused to resume (416); starting over")
    if status in RETRY_STATUS:
        raise _RetryableError(f"HTTP {status} from {url}")
    if status not in (200, 206):
        raise DownloadError(f"cannot download {url}: HTTP {status} {response.reason}")
    if status == 206:
        start = _content_range(response)[0]
        if start != offset:  # an answer for some other range: do not trust it
            part.unlink(missing_ok=True)
            raise _RetryableError(f"server sent bytes from {start}, asked from {offset}; starting over")
        return offset
    if offset:
        log.info("%s: server ignored the Range request; downloading from the start", part.name)
    return 0  # a 200 is always the whole file


def _content_range(response: requests.Response) -> tuple[int, int | None]:
    """(first byte, total size or None) from a 206's `Content-Range: bytes a-b/total`."""
    value = response.headers.get("Content-Range", "")
    try:
        unit, _, spec = value.partition(" ")
        span, _, total = spec.partition("/")
        if unit != "bytes":
            raise ValueError
        return int(span.split("-")[0]), None if total in ("", "*") else int(total)
    except ValueError:
        raise DownloadError(f"{response.url}: unreadable Content-Range header {value!r}") from None


def _total_size(response: requests.Response, offset: int) -> int | None:
    """Size of the whole file as the server reports it, or None when it does not say."""
    if response.status_code == 206:
        total = _content_range(response)[1]
        if total is not None:
            return total
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None and length.isdigit() else None


def _stream_to(
    response: requests.Response,
    part: Path,
    offset: int,
    total: int | None,
    progress: bool,
    stall: _Stall | None = None,
    timeout: float = TIMEOUT,
) -> None:
    """Append the body to `part` (truncated first when starting at 0), with a progress bar."""
    mode = "ab" if offset else "wb"
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name[: -len(".part")],
        leave=False,
        disable=None if progress else True,
    )
    # read1 hands over whatever has arrived; iter_content/read(n) wait for n bytes and throw
    # away a partly filled block when the connection drops, losing what resuming should keep.
    read1 = getattr(response.raw, "read1", None)
    blocks = iter(lambda: read1(CHUNK), b"") if read1 else response.iter_content(CHUNK)
    try:
        with open(part, mode) as fh:
            for block in blocks:
                fh.write(block)
                bar.update(len(block))
                if stall is not None and block:
                    stall.touch()
    except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
        raise _RetryableError(f"the server stopped sending for {timeout:.3g} s (read timeout)") from None
    except (
        requests.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.ProtocolError,
    ) as err:
        # What arrived is kept in .part: the next attempt resumes after it.
        raise _RetryableError(f"connection dropped ({err.__class__.__name__})") from None
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------
# Local mirror, and the one entry point used by the stages
# --------------------------------------------------------------------------------------------


def mirror_file(src: str | os.PathLike, *, size: int | None = None, advice: str = "") -> Path:
    """A file of a local mirror, checked to exist and (cheaply) to have the expected size."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(
            f"mirror file {src} not found: the mirror folder must hold every file "
            f"of the data set (or unset the mirror to download from the network)"
        )
    verify_file(
        src, size=size, label=f"mirror file {src}", advice=advice or "Replace the mirror's copy with a good one."
    )
    return src


def copy_from_mirror(
    src: str | os.PathLike, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None
) -> Path:
    """Copy a file from a local mirror to `dest`, verifying the copy before it gets its name."""
    dest = Path(dest)
    advice = f"Nothing was written to {dest}; replace the mirror's copy with a good one."
    src = mirror_file(src, size=size, advice=advice)  # cheap checks first
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        verify_file(tmp, sha256=sha256, size=size, label=f"mirror file {src}", advice=advice)
    return dest


def url_for(base_url: str, name: str) -> str:
    """`base_url` + `name` with each path segment URL-quoted (folder names contain spaces)."""
    return base_url.rstrip("/") + "/" + "/".join(quote(segment) for segment in name.split("/"))


def obtain(
    name: str,
    dest_dir: str | os.PathLike,
    *,
    base_url: str,
    mirror: str | os.PathLike | None = None,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    replace_bad: bool = False,
    retries: int = RETRIES,
    backoff: float = BACKOFF,
    timeout: float = TIMEOUT,
    deadline: float = DEADLINE,
) -> Path:
    """Make sure `dest_dir/name` exists and verifies; return its path.

    Already there and verifies: nothing is fetched. Already there and does not verify: raise
    ChecksumError (or, with `replace_bad`, delete it and fetch again). Otherwise copy it from
    `mirror/name` when a mirror folder is given, else download `base_url + name`.
    """
    dest = Path(dest_dir) / name
    if dest.exists():
        if _verifies(dest, sha256, size):
            log.debug("%s already present and verified", dest)
            return dest
        if not replace_bad:
            verify_file(
                dest,
                sha256=sha256,
                size=size,
                label=f"existing file {dest}",
                advice="It was left untouched. Delete it and re-run (or run with overwrite=true) "
                "to fetch a fresh copy.",
            )
        log.warning("%s does not verify: replacing it", dest)
        dest.unlink()
    if mirror is not None:
        log.debug("copying %s from mirror %s", name, mirror)
        return copy_from_mirror(Path(mirror) / name, dest, sha256=sha256, size=size)
    url = url_for(base_url, name)
    log.info("downloading %s", url)
    return fetch(
        url,
        dest,
        sha256=sha256,
        size=size,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        deadline=deadline,
        progress=progress,
    )


def obtain_all(
    files: dict[str, str],
    dest_dir: str | os.PathLike,
    *,
    base_url: str,
    mirror: str | os.PathLike | None = None,
    replace_bad: bool = False,
    progress: bool = True,
    **network,
) -> list[Path]:
    """`obtain` every {name: sha256} in `files`; return their paths in the same order.

    `network`: retries, backoff, timeout, deadline, passed on to `fetch`."""
    names = tqdm(files, desc="files", unit="file", disable=None if progress else True)
    if mirror is not None:
        log.info("taking %d file(s) from mirror %s (missing ones copied, every one verified)", len(files), mirror)
    paths = [
        obtain(
            name,
            dest_dir,
            base_url=base_url,
            mirror=mirror,
            sha256=files[name],
            replace_bad=replace_bad,
            progress=progress,
            **network,
        )
        for name in names
    ]
    log.info("%d file(s) in %s, all verified", len(paths), dest_dir)
    return paths


# --------------------------------------------------------------------------------------------
# Lock file: pin SHA-256 of files known only by size
# --------------------------------------------------------------------------------------------


def check_or_record_lock(files: Iterable[str | os.PathLike], lock_path: str | os.PathLike, record: bool = True) -> dict:
    """Verify `files` against the lock file, recording any file it does not list yet (unless
    `record` is false: then files it does not list are only left for a later call to pin).

    Some sources publish only sizes (the SiPaKMeD archives). After the first complete download
    this pins each file's SHA-256 and size in a JSON lock file beside them, so a later run notices
    a file that changed (a replaced or corrupted archive) even though its size still matches.
    Returns the lock's content {name: {"sha256": ..., "size": ...}}.
    """
    lock_path = Path(lock_path)
    lock = _read_lock(lock_path)
    changed, added = [], False
    for path in map(Path, files):
        key = _lock_key(path, lock_path)
        entry = {"sha256": file_sha256(path), "size": path.stat().st_size}
        if key not in lock:
            if record:
                lock[key], added = entry, True
        elif lock[key] != entry:
            changed.append(f"{path}: now {entry}, locked {lock[key]}")
    if changed:
        raise ChecksumError(
            f"files differ from the lock file {lock_path} (written after their first complete download):\n  "
            + "\n  ".join(changed)
            + "\nDelete the changed files and re-run to fetch them again; delete the lock file only if "
            "the source really published new versions."
        )
    if added:
        write_text(lock_path, json.dumps(dict(sorted(lock.items())), indent=2) + "\n")
    return lock


def _read_lock(lock_path: Path) -> dict:
    if not lock_path.exists():
        return {}
    try:
        lock = json.loads(lock_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"lock file {lock_path} is not valid JSON ({err}); delete it to record a new one") from err
    if not isinstance(lock, dict):
        raise ValueError(f"lock file {lock_path} should hold a JSON object {{name: {{sha256, size}}}}")
    return lock


def _lock_key(path: Path, lock_path: Path) -> str:
    """A file's name in the lock: its path relative to the lock's folder (its name when beside it)."""
    try:
        return path.resolve().relative_to(lock_path.parent.resolve()).as_posix()
    except ValueError:
        return path.name


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def mirror_setting(cfg: DictConfig, key: str) -> Path | None:
    """The local mirror folder named by config key `key`, or None when it is not set."""
    value = OmegaConf.select(cfg, key, default=None)
    return Path(value) if value else None


def network_settings(cfg: DictConfig) -> dict:
    """fetch's limits from the optional config keys download.{timeout,deadline,retries,backoff}."""
    defaults = {"timeout": TIMEOUT, "deadline": DEADLINE, "retries": RETRIES, "backoff": BACKOFF}
    settings = {}
    for key, default in defaults.items():
        value = OmegaConf.select(cfg, f"download.{key}", default=None)
        settings[key] = type(default)(default if value is None else value)
        if settings[key] < 0 or (key in ("timeout", "deadline") and settings[key] <= 0):
            raise ValueError(f"download.{key}={value}: must be positive")
    return settings


# The last line of a failed download's error: how to do without the network.
LOCAL_COPY_HINT = {
    "vfdb": "No network? Use a local copy of the VFDB: make reproduce TASK=ecg VFDB_DIR=<folder with the "
    "records' .hea/.dat/.atr files> (or the override paths.vfdb_mirror=<folder>).",
    "published_logs": "No network? Use a local copy of the authors' logs: make table3 PUBLISHED_LOGS_DIR=<folder "
    "with <Model>/<arm>_set_fold_<k>_log.csv> (or paths.published_logs_mirror=<folder>).",
    "sipakmed": "No network? Use a local copy of SiPaKMeD: make reproduce TASK=sipakmed SIPAKMED_DIR=<folder "
    "with the five .7z archives or the extracted tree> (or paths.sipakmed_mirror=<folder>).",
    "invalid_samples": "No network? Use a local copy of the authors' list: paths.invalid_samples_mirror=<path "
    "of invalid_samples.csv>, or task.data.fetch_authors_invalid=false to do without it.",
}


@contextlib.contextmanager
def local_copy_hint(which: str) -> Iterator[None]:
    """Re-raise a failed download (not a checksum mismatch) with LOCAL_COPY_HINT[which] as its
    last line, as one exception without the chain of tracebacks behind it."""
    try:
        yield
    except ChecksumError:
        raise
    except DownloadError as err:
        raise DownloadError(f"{err}\n{LOCAL_COPY_HINT[which]}") from None


def published_logs_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """The authors' 40 per-fold logs into `ctx.out` (`paths.published_logs_dir`), SHA-256 verified.

    Layout `<Model>/<arm>_set_fold_<k>_log.csv` (SPEC section 6), fetched from
    `cfg.sources.published_logs_url` or copied from the optional folder `paths.published_logs_mirror`.
    """
    with local_copy_hint("published_logs"):
        paths = obtain_all(
            registry("published_logs"),
            ctx.out,
            base_url=cfg.sources.published_logs_url,
            mirror=mirror_setting(cfg, "paths.published_logs_mirror"),
            replace_bad=bool(cfg.overwrite),
            **network_settings(cfg),
        )
    log.info("published logs: %d files verified in %s", len(paths), ctx.out)


def published_logs_outputs(cfg: DictConfig) -> list[str]:
    """The published_logs stage's declared outputs: every file of the registry."""
    return list(registry("published_logs"))
