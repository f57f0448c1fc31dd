"""returnn.util.basic.cf: the cluster file cache helper."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from returnn.util.basic import cf


@pytest.fixture(autouse=True)
def _fresh_cf_memo():
    cf.cache_clear()
    yield
    cf.cache_clear()


def _install_cf(bin_dir, script: str, monkeypatch) -> None:
    bin_dir.mkdir()
    exe = bin_dir / "cf"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_without_cf_returns_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cf("/data/corpus.hdf") == "/data/corpus.hdf"


def test_with_cf_returns_the_cached_path(tmp_path, monkeypatch):
    _install_cf(tmp_path / "bin", 'echo "/local/cache$1"\n', monkeypatch)
    assert cf("/data/corpus.hdf") == "/local/cache/data/corpus.hdf"


def test_failing_cf_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    _install_cf(tmp_path / "bin", "echo oops >&2; exit 3\n", monkeypatch)
    with caplog.at_level(logging.WARNING, logger="returnn.util.basic"):
        assert cf("/data/corpus.hdf") == "/data/corpus.hdf"
    assert "cf /data/corpus.hdf failed" in caplog.text
