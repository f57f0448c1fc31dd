"""The README's example config runs as written, on HDF files in the shape it expects."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from returnn.datasets.hdf import SimpleHDFWriter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example_config() -> str:
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## A complete config", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def write_hdf(filename: str, num_seqs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    writer = SimpleHDFWriter(filename, dim=40, ndim=2)
    for i in range(num_seqs):
        length = int(rng.integers(5, 30))
        labels = rng.integers(0, 10, size=(1, length)).astype("int32")
        features = rng.normal(size=(1, length, 40)).astype("float32")
        features[0, np.arange(length), labels[0]] += 3.0  # learnable: the label's feature stands out
        writer.insert_batch(features, seq_len=[length], seq_tag=[f"seq-{i}"], extra={"classes": labels})
    writer.close()


@pytest.mark.slow
def test_readme_example_config_trains(tmp_path):
    (tmp_path / "exp.config").write_text(readme_example_config())
    write_hdf(str(tmp_path / "train.hdf"), 60, seed=1)
    write_hdf(str(tmp_path / "dev.hdf"), 10, seed=2)
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
