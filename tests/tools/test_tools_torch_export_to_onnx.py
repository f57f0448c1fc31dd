"""tools/torch_export_to_onnx.py, run the way pipelines run it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, "tools", "torch_export_to_onnx.py")

CONFIG = """\
#!rnn.py
import torch
from returnn.torch.context import get_run_ctx


class Model(torch.nn.Module):
    def __init__(self, onnx_export=False):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.seen_epoch = get_run_ctx().epoch
        self.onnx_export = onnx_export

    def forward(self, x):
        return self.linear(x)


def get_model(*, epoch, step, onnx_export=False, **kwargs):
    return Model(onnx_export=onnx_export)


def export(*, model, f, input_names, output_names, **kwargs):
    assert model.onnx_export and model.seen_epoch == 7 and not model.training
    torch.onnx.export(
        model, (torch.zeros(1, 3),), f, input_names=input_names, output_names=output_names, dynamo=False
    )
"""


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT
    )


def make_checkpoint(tmp_path) -> str:
    torch.manual_seed(0)
    state = torch.nn.Linear(3, 2).state_dict()
    path = tmp_path / "epoch.007.pt"
    torch.save({"model": {f"linear.{k}": v for k, v in state.items()}, "epoch": 7, "step": 70}, path)
    return str(path)


def test_exports_checkpoint_with_config_export_function(tmp_path):
    onnx = pytest.importorskip("onnx")
    config = tmp_path / "export.config"
    config.write_text(CONFIG)
    out = tmp_path / "model.onnx"
    result = run_tool(str(config), make_checkpoint(tmp_path), str(out), "--device", "cpu", "--verbosity", "5",
                      "--input_names", "data", "--output_names", "log_probs")  # fmt: skip
    assert result.returncode == 0, result.stderr
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["data"] and [o.name for o in graph.output] == ["log_probs"]
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    expected = torch.load(tmp_path / "epoch.007.pt", weights_only=True)["model"]["linear.weight"].numpy()
    assert (weights["linear.weight"] == expected).all()


def test_config_without_export_function(tmp_path):
    config = tmp_path / "export.config"
    config.write_text(textwrap.dedent(CONFIG).split("def export")[0])
    result = run_tool(str(config), make_checkpoint(tmp_path), str(tmp_path / "m.onnx"))
    assert result.returncode == 2
    assert "the config must define 'export'" in result.stderr


def test_missing_checkpoint(tmp_path):
    config = tmp_path / "export.config"
    config.write_text(CONFIG)
    result = run_tool(str(config), str(tmp_path / "epoch.001.pt"), str(tmp_path / "m.onnx"))
    assert result.returncode == 2
    assert "checkpoint file not found" in result.stderr
