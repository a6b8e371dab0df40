"""The one atomic-write helper (``ebsr_basicsr._files``): temporary name, fsync, rename."""
import os
import stat

import pytest

from ebsr_basicsr import _files
from ebsr_basicsr._files import AtomicFile, atomic_write, remove_temp_files, temp_glob


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_bytes_and_callable(tmp_path):
    dst = tmp_path / "model.ebsr"
    assert atomic_write(dst, b"first") == 5
    assert dst.read_bytes() == b"first"
    assert atomic_write(dst, lambda f: (f.write(b"sec"), f.write(b"ond"))) == 6
    assert dst.read_bytes() == b"second"
    assert names(tmp_path) == ["model.ebsr"]
    assert stat.S_IMODE(dst.stat().st_mode) == _files.file_mode()  # not the temporary file's 0600
    atomic_write(dst, b"x", mode=0o640)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640


def test_fsync_before_rename(tmp_path, monkeypatch):
    synced, order = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), order.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b)))
    atomic_write(tmp_path / "a.bin", b"data")
    assert synced and order.index("fsync") < order.index("replace")


def test_a_failure_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    dst = tmp_path / "a.png"
    dst.write_bytes(b"old")

    def writer(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space"):
        atomic_write(dst, writer)
    assert dst.read_bytes() == b"old" and names(tmp_path) == ["a.png"]

    def broken_replace(a, b):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(PermissionError):
        atomic_write(dst, b"new")
    assert dst.read_bytes() == b"old" and names(tmp_path) == ["a.png"]
    # an interrupt (any BaseException) cleans up too
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):
        with AtomicFile(dst) as tmp:
            tmp.path.write_bytes(b"new")
            raise KeyboardInterrupt
    assert dst.read_bytes() == b"old" and names(tmp_path) == ["a.png"]
    # an unwritable folder is an OSError naming the reason
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "a.png", b"x")


def test_atomic_file_keeps_the_extension_and_commits_under_another_name(tmp_path):
    f = AtomicFile(tmp_path / "clip_x2.mp4")
    assert f.path.parent == tmp_path and f.path.name.startswith(".clip_x2.mp4.") and f.path.suffix == ".mp4"
    assert f.path.match(temp_glob("clip_x2.mp4"))
    f.path.write_bytes(b"frames")
    assert f.commit(tmp_path / "clip_x2.partial.mp4") == tmp_path / "clip_x2.partial.mp4"
    assert names(tmp_path) == ["clip_x2.partial.mp4"]
    with pytest.raises(ValueError):
        f.commit()
    g = AtomicFile(tmp_path / "b.png", suffix=".tif")
    assert g.path.suffix == ".tif"
    g.discard()
    g.discard()  # twice is harmless
    assert names(tmp_path) == ["clip_x2.partial.mp4"]


def test_remove_temp_files_matches_only_the_given_destination(tmp_path):
    weird = "a[1]*?.png"  # glob characters in a real file name
    stale = [AtomicFile(tmp_path / weird).path, AtomicFile(tmp_path / weird).path]
    others = [AtomicFile(tmp_path / "a1x.png").path, AtomicFile(tmp_path / "b.png").path]
    plain = [tmp_path / weird, tmp_path / ".hidden.png", tmp_path / "x.tmp"]
    for p in plain:
        p.write_bytes(b"x")
    assert remove_temp_files(tmp_path, weird) == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others + plain)
    assert remove_temp_files(tmp_path) == 2  # any destination
    assert names(tmp_path) == sorted(p.name for p in plain)
    assert remove_temp_files(tmp_path / "missing") == 0
