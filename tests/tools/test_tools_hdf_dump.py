"""tools/hdf_dump.py, run as a subprocess the way pipelines (i6_core's ReturnnDumpHDFJob) call it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.hdf import HDFDataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO_ROOT, "tools", "hdf_dump.py")
DUMMY = {"class": "DummyDataset", "input_dim": 3, "output_dim": 4, "num_seqs": 2}


def run_tool(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def read_hdf(path) -> list[tuple[str, dict[str, np.ndarray]]]:
    dataset = HDFDataset(files=[str(path)])
    dataset.init_seq_order(epoch=1)
    keys = dataset.get_data_keys()
    return [(dataset.get_tag(i), {k: dataset.get_data(i, k) for k in keys}) for i in range(dataset.num_seqs)]


def test_dumps_the_train_dataset_of_a_config_into_a_mkstemp_file(tmp_path):
    (tmp_path / "dataset.config").write_text(f"#!rnn.py\ntrain = {DUMMY!r}\n")
    fd, out = tempfile.mkstemp(suffix=".hdf", dir=tmp_path)  # what the pipeline job passes: an existing empty file
    os.close(fd)
    result = run_tool("dataset.config", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote 2 sequences" in result.stdout
    source = init_dataset(DUMMY)
    source.init_seq_order(epoch=1)
    seqs = read_hdf(out)
    assert [tag for tag, _ in seqs] == ["seq-0", "seq-1"]
    for i, (_, data) in enumerate(seqs):
        np.testing.assert_array_equal(data["data"], source.get_data(i, "data"))
        np.testing.assert_array_equal(data["classes"], source.get_data(i, "classes"))
    assert sorted(os.listdir(tmp_path)) == sorted(["dataset.config", os.path.basename(out)])


def test_dataset_dict_argument_and_sequence_range(tmp_path):
    dataset = {**DUMMY, "num_seqs": 6, "seq_len": 3}
    result = run_tool(repr(dataset), "out.hdf", "--start_seq", "1", "--end_seq", "3", "--epoch", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [tag for tag, _ in read_hdf(tmp_path / "out.hdf")] == ["seq-1", "seq-2", "seq-3"]


def test_hdf_file_argument_copies_the_file(tmp_path):
    assert run_tool(repr(DUMMY), "a.hdf", cwd=tmp_path).returncode == 0
    result = run_tool("a.hdf", "b.hdf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    original, copy = read_hdf(tmp_path / "a.hdf"), read_hdf(tmp_path / "b.hdf")
    assert [tag for tag, _ in copy] == [tag for tag, _ in original]
    for (_, a), (_, b) in zip(original, copy):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, r"hdf_dump: error: config file not found: 'missing\.config'"),
        ("dev = {'class': 'DummyDataset'}\n", r"defines no dataset 'train'; set train = \{'class': \.\.\.\}"),
        ("train = {'class': 'DumyDataset'}\n", r"unknown dataset class 'DumyDataset'\. Did you mean 'DummyDataset'"),
    ],
)
def test_bad_input_exits_with_code_2_and_one_line(tmp_path, config, message):
    if config is not None:
        (tmp_path / "missing.config").write_text(config)
    result = run_tool("missing.config", "out.hdf", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "out.hdf").exists()
