"""The README's example config runs as written, on the HDF files that the README's lines write."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import h5py
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example_blocks() -> list[str]:
    """The Python blocks of the README's "A complete config" section: the config, then the lines writing its data."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## A complete config", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


@pytest.mark.slow
def test_readme_example_config_trains(tmp_path):
    config, write_data = readme_example_blocks()
    (tmp_path / "exp.config").write_text(config)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    subprocess.run([sys.executable, "-c", write_data], cwd=tmp_path, env=env, check=True, timeout=60)
    with h5py.File(tmp_path / "train.hdf", "r") as f:
        assert f["inputs"].shape[1] == 40 and len(f["seqTags"]) == 60
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "rnn.py"), "exp.config", "++num_epochs", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (tmp_path / "out" / "learning_rates").read_text()
    epochs = eval(text, {"EpochData": dict, "nan": float("nan"), "inf": float("inf")})  # as pipelines read it
    assert sorted(epochs) == [1, 2, 3]
    dev = [epochs[e]["error"]["dev_loss_ce"] for e in (1, 2, 3)]
    assert dev[2] < dev[0]
    assert (tmp_path / "out" / "models" / "epoch.003.pt").exists()
