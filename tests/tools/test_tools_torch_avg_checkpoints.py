"""tools/torch_avg_checkpoints.py, run the way pipelines run it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from returnn.errors import CheckpointError
from returnn.tools.torch_avg_checkpoints import average_checkpoints

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def save_checkpoint(path, epoch: int, weight: float) -> str:
    state = {"w": torch.full((2, 3), weight), "b": torch.full((3,), weight, dtype=torch.float16)}
    state["count"] = torch.tensor(epoch * 10)
    torch.save({"model": state, "epoch": epoch, "step": epoch * 100, "extra": "first"}, path)
    return str(path)


def test_averages_float_tensors_and_merges_metadata(tmp_path):
    paths = [save_checkpoint(tmp_path / f"epoch.{e:03d}.pt", e, w) for e, w in ((4, 1.0), (8, 2.0), (6, 6.0))]
    result = average_checkpoints(paths)
    assert torch.equal(result["model"]["w"], torch.full((2, 3), 3.0))
    assert result["model"]["b"].dtype == torch.float16 and float(result["model"]["b"][0]) == 3.0
    assert int(result["model"]["count"]) == 80  # integer buffers come from the newest epoch
    assert (result["epoch"], result["step"]) == (8, 800)
    assert result["merged_epochs"] == [4, 8, 6] and result["merged_steps"] == [400, 800, 600]
    assert result["extra"] == "first"


def test_command_line_as_pipelines_call_it(tmp_path):
    paths = [save_checkpoint(tmp_path / f"epoch.{e:03d}.pt", e, float(e)) for e in (1, 3)]
    out = tmp_path / "output" / "model" / "average.pt"
    script = os.path.join(REPO_ROOT, "tools", "torch_avg_checkpoints.py")
    result = subprocess.run(
        [sys.executable, script, "--checkpoints", *paths, "--output_path", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    averaged = torch.load(out, weights_only=True)
    assert torch.equal(averaged["model"]["w"], torch.full((2, 3), 2.0))
    assert averaged["epoch"] == 3


def test_prefix_postfix_and_separator(tmp_path):
    from returnn.tools.torch_avg_checkpoints import checkpoint_paths, parse_args

    args = parse_args(
        ["--checkpoints", "epoch.001,epoch.002", "--prefix", f"{tmp_path}/", "--postfix", ".pt", "--output_path", "x"]
    )
    assert checkpoint_paths(args) == [f"{tmp_path}/epoch.001.pt", f"{tmp_path}/epoch.002.pt"]


def test_mismatching_checkpoints(tmp_path):
    first = save_checkpoint(tmp_path / "a.pt", 1, 1.0)
    torch.save({"model": {"w": torch.zeros(3, 3)}, "epoch": 2, "step": 1}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"other parameters than .*a.pt.*missing \['b', 'count'\]"):
        average_checkpoints([first, str(tmp_path / "b.pt")])
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        average_checkpoints([str(tmp_path / "missing.pt")])
    torch.save({"state": {}}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match="has no 'model' state dict"):
        average_checkpoints([str(tmp_path / "opt.pt")])
