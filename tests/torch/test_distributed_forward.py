"""Task forward with two processes started by torchrun (CPU, gloo): the output_file equals the one process's."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

from returnn.__main__ import main
from returnn.datasets.hdf import HDFDataset

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# NUM_SEQS sequences of different lengths, 2 per batch: with 9, rank 0 forwards batches 0, 2, 4 and rank 1 batches
# 1, 3; with 2, rank 1 gets no batch. No checkpoint: the model is initialized from the seed, the same in every process.
COMMON = """\
#!rnn.py
backend = "torch"
device = "cpu"
task = "forward"
forward = {"class": "Task12AXDataset", "num_seqs": NUM_SEQS, "fixed_random_seed": 3}
max_seqs = 2
batch_size = 10000
allow_random_model_init = True
output_file = "out.hdf"
log = ["returnn.log"]
log_verbosity = 4
"""

CONFIGS = {
    "network": COMMON
    + """
num_inputs = 9
num_outputs = 2
network = {
    "lstm": {"class": "rec", "unit": "lstm", "n_out": 8},
    "output": {"class": "softmax", "loss": "ce", "from": ["lstm"]},
}
""",
    "mainline": COMMON
    + """
import torch
import returnn.frontend as rf

extern_data = {"data": {"dim": 9}, "classes": {"dim": 2, "sparse": True, "available_for_inference": False}}
model_outputs = {"output": {"dim": 2}}


def get_model(*, epoch, step, **_kwargs):
    return torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def forward_step(*, model, extern_data):
    data = extern_data["data"]
    expected = rf.get_run_ctx().expected_outputs["output"]
    expected.dims[1].dyn_size_ext.raw_tensor = data.dims[1].dyn_size_ext.raw_tensor
    rf.get_run_ctx().mark_as_default_output(model(data.raw_tensor))
""",
}


def hdf_structure(path: pathlib.Path) -> dict[str, object]:
    """Every attribute, and every dataset's dtype and shape (the values are compared through HDFDataset)."""
    with h5py.File(path, "r") as f:
        found: dict[str, object] = {f"attr {key}": np.asarray(value).tolist() for key, value in f.attrs.items()}

        def visit(name: str, item: object) -> None:
            for key, value in item.attrs.items():
                found[f"{name} attr {key}"] = np.asarray(value).tolist()
            if isinstance(item, h5py.Dataset):
                found[name] = (str(item.dtype), item.shape)

        f.visititems(visit)
    return found


def read_back(path: pathlib.Path) -> list[tuple[str, np.ndarray]]:
    dataset = HDFDataset(files=[str(path)])
    dataset.init_seq_order(1)
    dataset.load_seqs(0, dataset.num_seqs)
    return [(dataset.get_tag(i), dataset.get_data(i, "data")) for i in range(dataset.num_seqs)]


@pytest.mark.parametrize("kind, num_seqs", [("network", 9), ("mainline", 9), ("network", 2)])
def test_two_process_forward_writes_the_one_process_output_file(tmp_path, monkeypatch, kind, num_seqs):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "exp.config").write_text(CONFIGS[kind].replace("NUM_SEQS", str(num_seqs)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2"]
    result = subprocess.run(
        [*command, str(REPO_ROOT / "rnn.py"), "exp.config"],
        cwd=tmp_path / "two",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    monkeypatch.chdir(tmp_path / "one")
    assert main(["exp.config"]) == 0

    two, one = tmp_path / "two" / "out.hdf", tmp_path / "one" / "out.hdf"
    assert sorted(os.listdir(tmp_path / "two")) == ["exp.config", "out.hdf", "returnn.log"]  # the parts are gone
    assert hdf_structure(two) == hdf_structure(one)
    two_seqs, one_seqs = read_back(two), read_back(one)
    assert [tag for tag, _ in two_seqs] == [tag for tag, _ in one_seqs] == [f"seq-{i}" for i in range(num_seqs)]
    for (_, two_values), (_, one_values) in zip(two_seqs, one_seqs):
        np.testing.assert_allclose(two_values, one_values, rtol=1e-5, atol=1e-6)
    log = (tmp_path / "two" / "returnn.log").read_text()
    assert f"forward: merged 2 parts ({num_seqs} sequences) into out.hdf" in log  # an empty part from rank 1 with 2
    assert f"forward: batches={(num_seqs + 1) // 2} epoch=0 processes=2" in log
