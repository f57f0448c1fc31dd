"""tools/plot_learning_rates.py: a PNG of the learning rate and the scores over the epochs."""

from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import sys

import pytest

from returnn.tools.plot_learning_rates import main

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

LEARNING_RATES = """{
1: EpochData(learningRate=0.001, error={'dev_loss_ce': 2.9, 'train_loss_ce': 3.2}),
2: EpochData(learningRate=0.001, error={'dev_loss_ce': 2.1, 'train_loss_ce': float('nan'), ':meta:x': 'y'}),
3: EpochData(learningRate=0.0005, error={'dev_loss_ce': 1.8, 'devtrain_loss_ce': 1.7}),
}
"""


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_writes_a_png_of_the_requested_size(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "learning_rates").write_text(LEARNING_RATES)
    out = tmp_path / "plots" / "curves.png"
    assert (
        main([str(tmp_path / "learning_rates"), "--out", str(out), "--width", "8", "--height", "5", "--dpi", "50"]) == 0
    )
    assert _png_size(out) == (400, 250)


def test_launcher_and_errors(tmp_path):
    (tmp_path / "learning_rates").write_text(LEARNING_RATES)
    command = [sys.executable, str(REPO_ROOT / "tools" / "plot_learning_rates.py"), "learning_rates"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "plot_learning_rates: error: plot_learning_rates needs the package matplotlib: pip install matplotlib"
        )
    else:
        assert result.returncode == 0, result.stderr
        assert _png_size(tmp_path / "learning_rates.png") == (1000, 600)
    result = subprocess.run(
        [sys.executable, "-m", "returnn.tools.plot_learning_rates", "missing"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "plot_learning_rates: error: learning_rates file not found: 'missing'"
