"""tools/dump-dataset.py, run as a subprocess the way pipelines call it; the statistics also in-process."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.hdf import SimpleHDFWriter
from returnn.errors import DatasetError
from returnn.tools.dump_dataset import FeatureStats

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO_ROOT, "tools", "dump-dataset.py")
TRAIN = {"class": "DummyDataset", "input_dim": 3, "output_dim": 4, "num_seqs": 5, "seq_len": 4}
DEV = {"class": "DummyDataset", "input_dim": 3, "output_dim": 4, "num_seqs": 2, "seq_len": 7}


def run_tool(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "returnn.config").write_text(f"#!rnn.py\ntrain = {TRAIN!r}\ndev = {DEV!r}\nlog = 'train.log'\n")
    return tmp_path


def test_mean_std_dev_files_as_the_pipeline_job_reads_them(config_dir):
    # i6_core's ExtractDatasetMeanStddevJob runs exactly this, then reads one float per line of each file
    args = ["returnn.config", "--endseq", "-1", "--type", "null", "--stats", "--dump_stats", "stats", "--key", "data"]
    result = run_tool(*args, cwd=config_dir)
    assert result.returncode == 0, result.stderr
    source = init_dataset(TRAIN)
    source.init_seq_order(epoch=1)
    frames = np.concatenate([source.get_data(i, "data") for i in range(5)]).astype(np.float64)
    with open(config_dir / "stats.mean.txt") as mean_file, open(config_dir / "stats.std_dev.txt") as std_file:
        means = [float(line) for line in mean_file]
        std_devs = [float(line.strip()) for line in std_file]
    np.testing.assert_allclose(means, frames.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std_devs, frames.std(axis=0), rtol=1e-12)
    assert "Data 'data': 5 seqs, 20 frames" in result.stdout
    assert not (config_dir / "train.log").exists()  # the tool logs to stdout, not to the training log


def test_print_tags_of_another_dataset_and_inclusive_end(config_dir):
    result = run_tool("returnn.config", "--dataset", "dev", "--type", "print_tag", "--endseq", "0", cwd=config_dir)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("seq ")] == ["seq 0/2 tag: seq-0"]
    assert "Seq length 'data': min 7, max 7, mean 7.00" in result.stdout
    counted = run_tool("returnn.config", "--get_num_seqs", cwd=config_dir)
    assert counted.stdout.strip().splitlines()[-1] == "num_seqs: 5"


def test_hdf_input_stdout_dump_with_labels_and_seq_lens_file(tmp_path):
    with SimpleHDFWriter(str(tmp_path / "a.hdf"), dim=3, ndim=1, labels=["sil", "a", "b"]) as writer:
        writer.insert_batch(np.array([[1, 2, 0], [2, 0, 0]], dtype="int32"), [3, 1], ["rec/1", "rec/2"])
    result = run_tool("a.hdf", "--endseq", "-1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("seq ")]
    assert lines == [
        "seq 0/2 tag: rec/1",
        "seq 0/2 data: [1 2 0] ('a b sil')",
        "seq 1/2 tag: rec/2",
        "seq 1/2 data: [2] ('b')",
    ]
    result = run_tool("a.hdf", "--type", "dump_seq_len", "--dump_prefix", "out.", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ast.literal_eval((tmp_path / "out.seq-lens.txt").read_text()) == {"rec/1": 3, "rec/2": 1}


def test_numpy_dump_and_shapes(config_dir):
    result = run_tool(repr(TRAIN), "--type", "numpy", "--endseq", "1", "--dump_prefix", "d.", cwd=config_dir)
    assert result.returncode == 0, result.stderr
    source = init_dataset(TRAIN)
    source.init_seq_order(epoch=1)
    np.testing.assert_allclose(np.loadtxt(config_dir / "d.1.data.txt.gz"), source.get_data(1, "data"))
    assert np.loadtxt(config_dir / "d.0.targets.classes.txt.gz").tolist() == source.get_data(0, "classes").tolist()
    assert not (config_dir / "d.2.data.txt.gz").exists()
    shapes = run_tool(repr(TRAIN), "--type", "print_shape", "--endseq", "0", cwd=config_dir)
    assert "seq 0/5 data shape: (4, 3)" in shapes.stdout
    assert "seq 0/5 target 'classes' shape: (4,)" in shapes.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["returnn.config", "--key", "clases"], r"--key 'clases': the dataset has no such key; choose one of"),
        ([repr(TRAIN), "--dataset", "dev"], r"--dataset 'dev' needs a config file"),
        (["returnn.config", "--dataset", "eval"], r"defines no dataset 'eval'"),
        (["nope.config"], r"config file not found: 'nope\.config'"),
    ],
)
def test_bad_input_exits_with_code_2_and_one_line(config_dir, args, message):
    result = run_tool(*args, cwd=config_dir)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("dump-dataset: error: ")
    assert re.search(message, result.stderr), result.stderr


def test_feature_stats_are_exact_over_many_sequences():
    rng = np.random.default_rng(3)
    seqs = [1e4 + rng.standard_normal((int(n), 2)) for n in rng.integers(0, 50, 40)]  # large offset, tiny spread
    stats = FeatureStats()
    for seq in seqs:
        stats.add(seq.astype(np.float32))
    frames = np.concatenate(seqs).astype(np.float32).astype(np.float64)
    assert stats.num_seqs == 40 and stats.num_frames == len(frames)
    np.testing.assert_allclose(stats.mean, frames.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std_dev, frames.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(stats.min, frames.min(axis=0))
    np.testing.assert_array_equal(stats.max, frames.max(axis=0))


def test_feature_stats_of_sparse_and_string_data():
    stats = FeatureStats()
    stats.add(np.array([1, 3], dtype=np.int32))
    stats.add(np.array([5], dtype=np.int32))
    assert stats.mean.tolist() == [3.0] and stats.std_dev.tolist() == [pytest.approx(np.std([1, 3, 5]))]
    with pytest.raises(DatasetError, match=r"cannot compute mean/std dev of object data; choose a numeric key"):
        stats.add(np.array(["a"], dtype=object))
