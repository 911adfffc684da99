"""Verified downloads: resume, retries, checksums, mirrors, lock file, and the download stages.

Everything is served by a threaded http.server on 127.0.0.1 started inside the test (no network).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import traceback

import pytest
from omegaconf import OmegaConf, open_dict

from coordchannels import download
from coordchannels.download import (
    ChecksumError,
    DownloadError,
    check_or_record_lock,
    copy_from_mirror,
    fetch,
    obtain,
    registry,
)
from coordchannels.ecg import download as ecg_download
from coordchannels.sipakmed import archives
from tests.conftest import PUBLISHED_LOGS, SHARED_DATA, VFDB_DIR, call_stage, require
from tests.http_server import FileServer

FAST = {"retries": 2, "backoff": 0.01, "timeout": 10, "progress": False}
PAYLOAD = bytes(range(256)) * 40  # 10 KiB, every byte value
NAME = "dir/a.bin"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """A proxy configured in the environment must not intercept requests to 127.0.0.1."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server():
    with FileServer({NAME: PAYLOAD}) as srv:
        yield srv


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ fetch


def test_fetch_downloads_and_verifies(server, tmp_path):
    dest = fetch(server.url + NAME, tmp_path / "a.bin", sha256=sha(PAYLOAD), size=len(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["a.bin"]


def test_corrupted_download_raises_and_leaves_nothing(server, tmp_path):
    server.corrupt.add(NAME)
    corrupted = bytes([PAYLOAD[0] ^ 0xFF]) + PAYLOAD[1:]
    with pytest.raises(ChecksumError) as err:
        fetch(server.url + NAME, tmp_path / "a.bin", sha256=sha(PAYLOAD), **FAST)
    message = str(err.value)
    assert "a.bin" in message and sha(PAYLOAD) in message and sha(corrupted) in message
    assert "re-run" in message.lower()
    assert leftovers(tmp_path) == []  # no dest, no .part


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
    server.drop_once.add(NAME)
    dest = fetch(server.url + NAME, tmp_path / "a.bin", sha256=sha(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    half = len(PAYLOAD) // 2
    assert server.requests == [(NAME, None), (NAME, f"bytes={half}-")]
    assert leftovers(tmp_path) == ["a.bin"]


def test_part_left_by_an_earlier_run_is_continued(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:3000])
    fetch(server.url + NAME, tmp_path / "a.bin", sha256=sha(PAYLOAD), size=len(PAYLOAD), **FAST)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests == [(NAME, "bytes=3000-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:3000])
    fetch(server.url + NAME, tmp_path / "a.bin", sha256=sha(PAYLOAD), **FAST)
    # the 200 carried the whole file; appending it to the .part would have doubled the start
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests == [(NAME, "bytes=3000-")]


def test_stale_part_with_wrong_bytes_is_replaced_by_a_clean_download(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(b"\0" * 3000)  # e.g. left by an older version of the file
    fetch(server.url + NAME, tmp_path / "a.bin", sha256=sha(PAYLOAD), **FAST)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests == [(NAME, "bytes=3000-"), (NAME, None)]


def test_stale_part_then_corrupt_server_gives_up_after_one_clean_try(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(b"\0" * 3000)
    server.corrupt.add(NAME)
    with pytest.raises(ChecksumError):
        fetch(server.url + NAME, tmp_path / "a.bin", sha256=sha(PAYLOAD), **FAST)
    assert server.count(NAME) == 2
    assert leftovers(tmp_path) == []


def test_busy_server_is_retried(server, tmp_path):
    server.fail[NAME] = [503, 502]
    fetch(server.url + NAME, tmp_path / "a.bin", sha256=sha(PAYLOAD), **FAST)
    assert server.count(NAME) == 3
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_missing_file_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        fetch(server.url + "nope.bin", tmp_path / "nope.bin", **FAST)
    assert server.count("nope.bin") == 1
    assert leftovers(tmp_path) == []


def test_gives_up_after_retries_without_a_complete_looking_file(server, tmp_path):
    server.lie_size[NAME] = 7  # every response ends 7 bytes before its Content-Length
    with pytest.raises(DownloadError, match="3 attempts"):
        fetch(server.url + NAME, tmp_path / "a.bin", **FAST)
    assert server.count(NAME) == 3
    assert not (tmp_path / "a.bin").exists()


def test_size_mismatch_fails_before_downloading(server, tmp_path):
    with pytest.raises(ChecksumError, match=f"reports {len(PAYLOAD)} bytes.*expects {len(PAYLOAD) + 1}"):
        fetch(server.url + NAME, tmp_path / "a.bin", size=len(PAYLOAD) + 1, **FAST)
    assert leftovers(tmp_path) == []
    assert server.count(NAME) == 1  # and no retries: a wrong file stays wrong


def test_size_verified_download_with_no_reported_size_is_checked_after(server, tmp_path, monkeypatch):
    # Some servers send no Content-Length; the size is then checked on the finished .part.
    monkeypatch.setattr(download, "_total_size", lambda response, offset: None)
    with pytest.raises(ChecksumError, match=f"size is {len(PAYLOAD)} bytes, expected {len(PAYLOAD) - 1}"):
        fetch(server.url + NAME, tmp_path / "a.bin", size=len(PAYLOAD) - 1, **FAST)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ mirror and obtain


def test_copy_from_mirror_verifies(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "a.bin").write_bytes(PAYLOAD)
    dest = copy_from_mirror(
        tmp_path / "mirror" / "a.bin", tmp_path / "out" / "a.bin", sha256=sha(PAYLOAD), size=len(PAYLOAD)
    )
    assert dest.read_bytes() == PAYLOAD


def test_bad_mirror_file_is_an_error_and_nothing_is_copied(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "a.bin").write_bytes(PAYLOAD[::-1])
    with pytest.raises(ChecksumError, match="mirror file .*a.bin: SHA-256"):
        copy_from_mirror(tmp_path / "mirror" / "a.bin", tmp_path / "out" / "a.bin", sha256=sha(PAYLOAD))
    assert leftovers(tmp_path / "out") == []
    with pytest.raises(ChecksumError, match="size is"):
        copy_from_mirror(tmp_path / "mirror" / "a.bin", tmp_path / "out" / "a.bin", size=1)


def test_missing_mirror_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="mirror file .*gone.bin not found"):
        copy_from_mirror(tmp_path / "gone.bin", tmp_path / "out.bin")


def test_obtain_does_not_refetch_a_verified_file(server, tmp_path):
    args = dict(base_url=server.url + "dir/", sha256=sha(PAYLOAD), progress=False)
    first = obtain("a.bin", tmp_path, **args)
    mtime = first.stat().st_mtime_ns
    second = obtain("a.bin", tmp_path, **args)
    assert first == second and second.stat().st_mtime_ns == mtime
    assert server.count(NAME) == 1


def test_obtain_refuses_to_overwrite_a_bad_existing_file(server, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"user data")
    args = dict(base_url=server.url + "dir/", sha256=sha(PAYLOAD), progress=False)
    with pytest.raises(ChecksumError, match="existing file .*a.bin.*overwrite=true"):
        obtain("a.bin", tmp_path, **args)
    assert (tmp_path / "a.bin").read_bytes() == b"user data"
    assert server.count(NAME) == 0
    obtain("a.bin", tmp_path, replace_bad=True, **args)  # opt-in replacement
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_obtain_quotes_names_with_spaces_and_prefers_the_mirror(tmp_path):
    name = "Reduced Parameter NimeshaNet/study_set_fold_1_log.csv"
    with FileServer({"logs/" + name: PAYLOAD}) as srv:
        dest = obtain(name, tmp_path / "net", base_url=srv.url + "logs", sha256=sha(PAYLOAD), progress=False)
        assert dest == tmp_path / "net" / name and dest.read_bytes() == PAYLOAD
        assert srv.requests == [("logs/" + name, None)]
        mirror = tmp_path / "net"
        copied = obtain(name, tmp_path / "copy", base_url=srv.url, mirror=mirror, sha256=sha(PAYLOAD))
        assert copied.read_bytes() == PAYLOAD
        assert len(srv.requests) == 1  # the mirror was used, not the server


# ------------------------------------------------------------------ lock file


def test_lock_is_recorded_then_detects_a_changed_file(tmp_path):
    a, b = tmp_path / "a.7z", tmp_path / "b.7z"
    a.write_bytes(PAYLOAD)
    b.write_bytes(b"bbbb")
    lock_path = tmp_path / "archives.lock.json"
    lock = check_or_record_lock([a, b], lock_path)
    assert lock == {"a.7z": {"sha256": sha(PAYLOAD), "size": len(PAYLOAD)}, "b.7z": {"sha256": sha(b"bbbb"), "size": 4}}
    assert json.loads(lock_path.read_text()) == lock
    assert check_or_record_lock([a, b], lock_path) == lock  # unchanged: passes
    b.write_bytes(b"bbbc")  # same size, different content: only the lock can tell
    with pytest.raises(ChecksumError, match=r"b\.7z") as err:
        check_or_record_lock([a, b], lock_path)
    assert "a.7z" not in str(err.value).split("\n", 1)[1]
    assert json.loads(lock_path.read_text()) == lock  # the lock itself is not rewritten


def test_broken_lock_file_is_a_clear_error(tmp_path):
    (tmp_path / "a.7z").write_bytes(b"a")
    (tmp_path / "x.lock.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.lock.json is not valid JSON"):
        check_or_record_lock([tmp_path / "a.7z"], tmp_path / "x.lock.json")


# ------------------------------------------------------------------ registry


def test_registry_holds_the_published_facts():
    vfdb = registry("vfdb")
    assert len(vfdb) == 66
    assert {name.split(".")[0] for name in vfdb} == {
        "418",
        "419",
        "420",
        "421",
        "422",
        "423",
        "424",
        "425",
        "426",
        "427",
        "428",
        "429",
        "430",
        "602",
        "605",
        "607",
        "609",
        "610",
        "611",
        "612",
        "614",
        "615",
    }
    logs = registry("published_logs")
    assert len(logs) == 40
    assert "Reduced Parameter NimeshaNet/control_set_fold_1_log.csv" in logs
    assert list(registry("invalid_samples")) == ["invalid_samples.csv"]
    sizes = registry("sipakmed_archives")
    assert sizes["im_Koilocytotic.7z"] == 1290478065 and sum(sizes.values()) == 5181546173
    with pytest.raises(KeyError, match="no registry file named 'nope'"):
        registry("nope")


def test_vfdb_registry_matches_the_shared_checksums():
    sums = require(VFDB_DIR / "SHA256SUMS", "the VFDB checksum file")
    expected = dict(line.split("  ")[::-1] for line in sums.read_text().splitlines() if line.strip())
    assert registry("vfdb") == expected


# ------------------------------------------------------------------ stages


def test_config_names_these_stages(make_cfg):
    from hydra.utils import get_method

    from coordchannels.stages import stage_spec

    cfg = make_cfg("task=ecg")
    assert get_method(stage_spec(cfg, "download").fn) is ecg_download.download_stage
    assert get_method(stage_spec(cfg, "published_logs").fn) is download.published_logs_stage


def tiny_tree(prefix: str, names: list[str]) -> dict[str, bytes]:
    return {f"{prefix}{name}": f"content of {name}\n".encode() * 50 for name in names}


def fake_registry(monkeypatch, name: str, value: dict) -> None:
    real = download.registry
    monkeypatch.setattr(download, "registry", lambda which: value if which == name else real(which))


def test_vfdb_stage_fetches_verifies_and_skips_on_rerun(make_cfg, monkeypatch, tmp_path):
    names = [f"{r}.{ext}" for r in (418, 419) for ext in ("hea", "dat", "atr")]
    tree = tiny_tree("vfdb/", names)
    fake_registry(monkeypatch, "vfdb", {n: sha(tree["vfdb/" + n]) for n in names} | {"420.hea": "0" * 64})
    cfg = make_cfg("task=ecg", "task.data.records=[418,419]")
    with FileServer(tree) as srv, open_dict(cfg):
        cfg.task.data.url = srv.url + "vfdb/"
        call_stage(cfg, "download")
        raw = tmp_path / "data" / "raw" / "vfdb"
        assert sorted(p.name for p in raw.iterdir()) == sorted(names)
        assert all((raw / n).read_bytes() == tree["vfdb/" + n] for n in names)
        call_stage(cfg, "download")  # second run: everything verifies, nothing is fetched
        assert len(srv.requests) == 6


def test_vfdb_stage_rejects_unknown_records_before_fetching(make_cfg):
    cfg = make_cfg("task=ecg", "task.data.records=[418,999]")
    with FileServer({}) as srv, open_dict(cfg):
        cfg.task.data.url = srv.url
        with pytest.raises(ValueError, match=r"record\(s\) \['999'\] are not in the registry"):
            call_stage(cfg, "download")
        assert srv.requests == []


def test_vfdb_stage_from_the_shared_mirror_verifies_all_66_files(make_cfg, tmp_path):
    mirror = require(VFDB_DIR, "the VFDB mirror")
    cfg = make_cfg("task=ecg", f"paths.vfdb_mirror={mirror}")
    with open_dict(cfg):
        cfg.task.data.url = "http://127.0.0.1:9/unreachable/"  # the mirror must be used
    call_stage(cfg, "download")
    raw = tmp_path / "data" / "raw" / "vfdb"
    files = sorted(p.name for p in raw.iterdir() if p.is_file())
    assert files == sorted(registry("vfdb"))


def test_published_logs_stage_serves_the_layout(make_cfg, monkeypatch, tmp_path):
    names = ["NimeshaNet/control_set_fold_1_log.csv", "Reduced Parameter NimeshaNet/study_set_fold_2_log.csv"]
    tree = tiny_tree("Logs/", names)
    fake_registry(monkeypatch, "published_logs", {n: sha(tree["Logs/" + n]) for n in names})
    cfg = make_cfg()
    with FileServer(tree) as srv, open_dict(cfg):
        cfg.sources.published_logs_url = srv.url + "Logs/"
        call_stage(cfg, "published_logs")
    out = tmp_path / "data" / "raw" / "published_logs"
    assert all((out / n).read_bytes() == tree["Logs/" + n] for n in names)


def test_published_logs_stage_with_the_real_registry(make_cfg, tmp_path):
    root = require(PUBLISHED_LOGS, "the published logs")
    tree = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.csv")}
    cfg = make_cfg()
    with FileServer(tree) as srv, open_dict(cfg):
        cfg.sources.published_logs_url = srv.url
        call_stage(cfg, "published_logs")
        assert len(srv.requests) == 40
    out = tmp_path / "data" / "raw" / "published_logs"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.csv")) == sorted(tree)


def test_invalid_samples_is_fetched_and_verified(make_cfg, tmp_path):
    real = require(SHARED_DATA / "sipakmed_invalid_samples.csv", "the invalid-sample list")
    cfg = make_cfg("task=sipakmed")
    with FileServer({"branch/invalid_samples.csv": real.read_bytes()}) as srv, open_dict(cfg):
        cfg.sources.invalid_samples_url = srv.url + "branch/invalid_samples.csv"
        path = archives.invalid_samples(cfg)
        assert path == tmp_path / "data" / "raw" / "sipakmed" / "invalid_samples.csv"
        assert path.read_bytes() == real.read_bytes()
        archives.invalid_samples(cfg)
        srv.corrupt.add("branch/invalid_samples.csv")
        path.unlink()
        with pytest.raises(ChecksumError, match="invalid_samples.csv"):
            archives.invalid_samples(cfg)
        assert srv.count("branch/invalid_samples.csv") == 2
    assert not path.exists()


def test_sipakmed_archives_by_size_then_lock(make_cfg, monkeypatch, tmp_path):
    tree = {"SIPAKMED/im_A.7z": b"A" * 3000, "SIPAKMED/im_B.7z": b"B" * 5000}
    fake_registry(monkeypatch, "sipakmed_archives", {"im_A.7z": 3000, "im_B.7z": 5000})
    cfg = make_cfg("task=sipakmed")
    raw = tmp_path / "data" / "raw" / "sipakmed"
    with FileServer(tree) as srv, open_dict(cfg):
        cfg.task.data.url = srv.url + "SIPAKMED/"
        srv.drop_once.add("SIPAKMED/im_B.7z")
        monkeypatch.setattr(download, "fetch", _fast(download.fetch))
        paths = archives.sipakmed_archives(cfg)
        assert paths == [raw / "im_A.7z", raw / "im_B.7z"]
        assert ("SIPAKMED/im_B.7z", "bytes=2500-") in srv.requests
        # Not pinned yet: archives are locked only once they have extracted (the download stage).
        assert not (raw / archives.SIPAKMED_LOCK).exists()
        download.check_or_record_lock(paths, raw / archives.SIPAKMED_LOCK)
        lock = json.loads((raw / archives.SIPAKMED_LOCK).read_text())
        assert lock["im_B.7z"] == {"sha256": sha(b"B" * 5000), "size": 5000}
        archives.sipakmed_archives(cfg)
        assert len(srv.requests) == 3  # nothing fetched again
    (raw / "im_A.7z").write_bytes(b"X" * 3000)  # right size, wrong content
    with pytest.raises(ChecksumError, match="im_A.7z"):
        archives.sipakmed_archives(cfg)


def test_sipakmed_archives_from_a_mirror(make_cfg, monkeypatch, tmp_path):
    fake_registry(monkeypatch, "sipakmed_archives", {"im_A.7z": 3, "im_B.7z": 4})
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cfg = make_cfg("task=sipakmed", f"paths.sipakmed_mirror={mirror}")
    assert archives.sipakmed_archives(cfg) == []  # an extracted tree: nothing to do
    (mirror / "im_A.7z").write_bytes(b"aaa")
    with pytest.raises(FileNotFoundError, match="im_B.7z not found"):
        archives.sipakmed_archives(cfg)
    (mirror / "im_B.7z").write_bytes(b"bbbb")
    paths = archives.sipakmed_archives(cfg)
    assert [p.read_bytes() for p in paths] == [b"aaa", b"bbbb"]


def _fast(fetch_fn):
    """The real fetch with test-sized back-off (stages use the production defaults)."""

    def wrapped(url, dest, **kwargs):
        return fetch_fn(url, dest, **{**kwargs, "backoff": 0.01, "timeout": 10})

    return wrapped


def test_invalid_samples_from_a_local_mirror(make_cfg, tmp_path):
    real = require(SHARED_DATA / "sipakmed_invalid_samples.csv", "the invalid-sample list")
    cfg = make_cfg(
        "task=sipakmed",
        f"paths.invalid_samples_mirror={real}",
        "sources.invalid_samples_url=http://127.0.0.1:9/unreachable.csv",
    )
    path = archives.invalid_samples(cfg)
    assert path.read_bytes() == real.read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("filename\n1_001_01\n")
    path.unlink()
    with open_dict(cfg):
        cfg.paths.invalid_samples_mirror = str(bad)
    with pytest.raises(ChecksumError):
        archives.invalid_samples(cfg)
    assert not path.exists()


# ------------------------------------------------------------------ time limits and failure messages


@pytest.fixture
def silent_server():
    """A port that accepts connections (the kernel's backlog) but never answers a request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connection refused, as with no network."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/"


def chained(err: BaseException) -> bool:
    """Whether Python would print more than this one exception's traceback."""
    text = "".join(traceback.format_exception(err))
    return "During handling" in text or "direct cause" in text


def test_server_that_never_answers_fails_at_the_deadline_with_the_cause(silent_server, tmp_path):
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch(
            silent_server + NAME, tmp_path / "a.bin", retries=10, backoff=0.2, timeout=0.5, deadline=2, progress=False
        )
    took = time.monotonic() - start
    assert 1.5 <= took < 4, took  # the deadline, not 11 attempts x 0.5 s + backoff
    message = str(err.value)
    assert "read timeout" in message and "no data for 2 s" in message, message
    assert not chained(err.value)
    assert leftovers(tmp_path) == []


def test_default_limits_fail_a_silent_server_within_about_30_seconds():
    assert download.TIMEOUT == 10 and download.DEADLINE == 30
    # the worst case: every attempt waits a whole timeout, plus the waits between attempts
    worst = sum(download.BACKOFF * 2**a for a in range(download.RETRIES)) + download.TIMEOUT
    assert min(worst, download.DEADLINE) + download.TIMEOUT <= 40


def test_slow_download_that_keeps_sending_is_not_cut_off(tmp_path):
    # 12 pieces 0.1 s apart: 1.2 s in all, longer than the deadline, but never silent for long
    body = bytes(range(120))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def serve():
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 10):
                time.sleep(0.1)
                conn.sendall(body[i : i + 10])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        dest = fetch(
            f"http://127.0.0.1:{sock.getsockname()[1]}/a.bin",
            tmp_path / "a.bin",
            sha256=sha(body),
            retries=0,
            timeout=0.5,
            deadline=0.6,
            progress=False,
        )
    finally:
        thread.join(timeout=5)
        sock.close()
    assert dest.read_bytes() == body


@pytest.mark.parametrize(
    "stage, overrides, url_key, variable",
    [
        ("published_logs", [], "sources.published_logs_url", "PUBLISHED_LOGS_DIR="),
        ("download", ["task=ecg", "task.data.records=[418]"], "task.data.url", "VFDB_DIR="),
        ("download", ["task=sipakmed"], "task.data.url", "SIPAKMED_DIR="),
    ],
)
def test_no_network_and_no_mirror_ends_with_how_to_use_a_local_copy(make_cfg, stage, overrides, url_key, variable):
    cfg = make_cfg(*overrides, "download.backoff=0.01", "download.retries=1")
    with open_dict(cfg):
        OmegaConf.update(cfg, url_key, closed_port_url())
    with pytest.raises(DownloadError) as err:
        call_stage(cfg, stage)
    lines = str(err.value).splitlines()
    assert "connection failed" in lines[0] and "Connection refused" in lines[0], lines
    assert variable in lines[-1] and "local copy" in lines[-1], lines
    assert not chained(err.value)


def test_invalid_samples_without_network_says_how_to_do_without(make_cfg):
    cfg = make_cfg("task=sipakmed", "download.retries=0")
    with open_dict(cfg):
        cfg.sources.invalid_samples_url = closed_port_url() + "invalid_samples.csv"
    with pytest.raises(DownloadError) as err:
        archives.invalid_samples(cfg)
    assert "paths.invalid_samples_mirror=" in str(err.value).splitlines()[-1]


def test_network_settings_come_from_the_config_with_defaults(make_cfg):
    assert download.network_settings(make_cfg()) == {"timeout": 10.0, "deadline": 30.0, "retries": 4, "backoff": 1.0}
    cfg = make_cfg("download.deadline=120", "download.timeout=5")
    assert download.network_settings(cfg)["deadline"] == 120.0 and download.network_settings(cfg)["timeout"] == 5.0
    with pytest.raises(ValueError, match="download.timeout=0"):
        download.network_settings(make_cfg("download.timeout=0"))
