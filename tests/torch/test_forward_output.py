"""Which forward functions gather their outputs from several processes, and the output file of one process."""

from __future__ import annotations

import os

import pytest

from returnn.config import Config
from returnn.datasets.hdf import SimpleHDFWriter
from returnn.errors import DatasetError
from returnn.forward_iface import ForwardCallbackIface
from returnn.torch.forward_output import ForwardOutputFile, part_filename
from returnn.torch.step_functions import StepFunctions

NETWORK = {"output": {"class": "softmax", "loss": "ce"}}


def own_forward_step(*, model, data, run_ctx, **kwargs):
    pass


def mainline_forward_step(*, model, extern_data):
    pass


class Callback(ForwardCallbackIface):
    pass


@pytest.mark.parametrize(
    "keys, gathers",
    [
        ({"network": NETWORK, "num_inputs": 3, "num_outputs": 2}, True),
        ({"network": NETWORK, "num_inputs": 3, "num_outputs": 2, "forward_step": own_forward_step}, False),
        ({"forward_step": mainline_forward_step}, True),
        ({"forward_step": mainline_forward_step, "forward_callback": Callback}, True),
        ({"forward_step": own_forward_step}, False),
    ],
)
def test_the_trainers_own_forward_gathers_outputs_and_a_configs_own_runs_in_process_directories(keys, gathers):
    assert StepFunctions.from_config(Config(keys)).forward_gathers_outputs is gathers


def test_one_process_writes_the_output_file_itself_and_refuses_an_existing_one(tmp_path):
    filename = str(tmp_path / "out.hdf")
    output = ForwardOutputFile(filename, None)
    assert output.path == filename
    with SimpleHDFWriter(output.path, dim=None, ndim=1) as writer:
        writer.insert_batch([[1, 2]], [2], ["seq-0"])
    output.add([0])
    output.finish(written=True)
    assert os.listdir(tmp_path) == ["out.hdf"] and output.seq_indices == [0]
    with pytest.raises(DatasetError, match=r"forward: output_file '.*out.hdf' already exists; delete it first"):
        ForwardOutputFile(filename, None)
    assert part_filename(filename, 1) == f"{filename}.part1"
