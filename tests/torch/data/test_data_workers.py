"""The loader with real spawned DataLoader worker processes: sharding, epochs, config functions, shutdown."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from returnn.config import Config, load_config
from returnn.errors import DatasetError
from returnn.torch.data import DataPipelineOptions, build_data_loader

pytestmark = pytest.mark.slow  # each test starts worker processes (about 2 s each)

REPO_ROOT = Path(__file__).resolve().parents[3]


def _worker_pids() -> set[int]:
    """Spawned child processes of this process (DataLoader workers; not multiprocessing's resource tracker)."""
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as file:
                pids.update(int(pid) for pid in file.read().split())
        except FileNotFoundError:  # the thread ended since the listing (e.g. a DataLoader's pin or feeder thread)
            continue
    return {pid for pid in pids if "spawn_main" in _cmdline(pid)}


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_two_workers_shard_each_epoch_and_batch_their_shards_with_batching_scope_shard(static_dataset, epoch_tags):
    # 8 sequences, max_seqs 8, 2 workers: worker 0 batches positions [0, 2, 4, 6] of the epoch's order,
    # worker 1 [1, 3, 5, 7]; the DataLoader takes worker 0's batch first (see returnn.torch.data.loader).
    before = _worker_pids()
    options = DataPipelineOptions.parse(batch_size=100, max_seqs=8, num_workers_per_gpu=2, batching_scope="shard")
    loader = build_data_loader(static_dataset(8, seq_ordering="random"), options)
    orders = []
    for epoch in (1, 2, 3):
        batches = list(loader.iter_epoch(epoch))
        order = epoch_tags(static_dataset(8, seq_ordering="random"), epoch)
        assert [batch["seq_idx"] for batch in batches] == [[0, 2, 4, 6], [1, 3, 5, 7]]
        assert [batch["seq_tag"] for batch in batches] == [order[0::2], order[1::2]]
        for batch in batches:
            for row, tag in enumerate(batch["seq_tag"]):
                index = int(tag.split("-")[1])
                assert batch["data"][row, : index + 1].tolist() == [[index, index]] * (index + 1)
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    assert len(_worker_pids() - before) == 2
    loader.close()
    assert _worker_pids() == before


def test_one_worker_gives_the_main_process_batches_and_is_collected_with_the_loader(static_dataset):
    before = _worker_pids()
    stream = {"size": 3, "step": 2}
    raw = {
        "batch_size": 12,
        "max_seqs": 3,
        "chunking_options": {"chunk_streams": {"data": stream, "classes": stream}, "random_chunk_start": True},
        "online_shuffle_batches": 3,
    }
    in_process = build_data_loader(static_dataset(8, seq_ordering="random"), DataPipelineOptions.parse(**raw))
    with_worker = build_data_loader(
        static_dataset(8, seq_ordering="random"), DataPipelineOptions.parse(**raw, num_workers_per_gpu=1)
    )
    for epoch in (1, 2):
        expected = list(in_process.iter_epoch(epoch))
        got = list(with_worker.iter_epoch(epoch))
        assert len(got) == len(expected) > 3
        for batch, reference in zip(got, expected):
            assert batch.keys() == reference.keys()
            for key, value in reference.items():
                assert torch.equal(batch[key], value) if isinstance(value, torch.Tensor) else batch[key] == value
    assert len(_worker_pids() - before) == 1
    del with_worker
    gc.collect()
    assert _worker_pids() == before


def test_two_workers_of_rank_1_yield_its_epoch_batches_in_order(static_dataset):
    # batching_scope "epoch": rank 1 of 2 trains the epoch's batches 1, 3, 5, ...; its worker 0 makes 1, 5, 9, ...
    # and worker 1 makes 3, 7, ...; the DataLoader interleaves them back into the epoch's order
    options = DataPipelineOptions.parse(batch_size=100, max_seqs=2, num_workers_per_gpu=2)
    in_process = DataPipelineOptions.parse(batch_size=100, max_seqs=2, num_workers_per_gpu=0)
    with build_data_loader(static_dataset(13, seq_ordering="random"), options, rank=1, world_size=2) as loader:
        for epoch in (1, 2):
            got = [batch["seq_tag"] for batch in loader.iter_epoch(epoch)]
            single = [
                batch["seq_tag"]
                for batch in build_data_loader(static_dataset(13, seq_ordering="random"), in_process).iter_epoch(epoch)
            ]
            assert got == single[1::2] and len(got) == 3


_CONFIG = """\
#!rnn.py
import numpy as np

from returnn.datasets.basic import DatasetSeq
from returnn.datasets.generating import GeneratingDataset


def make_features(corpus_idx):
    return np.full((corpus_idx + 1, 3), corpus_idx * 10, dtype="float32")


class ConfigDataset(GeneratingDataset):
    def __init__(self, make, **kwargs):
        super().__init__(input_dim=3, output_dim={"data": (3, 2)}, num_seqs=4, **kwargs)
        self.make = make

    def generate_seq(self, seq_idx):
        return DatasetSeq(seq_idx, {"data": self.make(seq_idx)})


train = ConfigDataset(make=make_features)
batch_size = 100
num_workers_per_gpu = 1
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.config"
    path.write_text(_CONFIG)
    yield path
    sys.modules.pop(Config.MODULE_NAME, None)


def test_spawned_worker_rebuilds_the_config_before_the_dataset(config_file):
    config = load_config([str(config_file), "++batch_size", "2"])
    options = DataPipelineOptions.from_config(config)
    assert options.num_workers == 1
    with build_data_loader(config.typed_value("train"), options, mode="eval") as loader:
        batches = list(loader.iter_epoch(1))
    assert [batch["seq_tag"] for batch in batches] == [["seq-0"], ["seq-1"], ["seq-2"], ["seq-3"]]
    assert [batch["data"][0, 0, 0].item() for batch in batches] == [0.0, 10.0, 20.0, 30.0]


def test_spawned_worker_without_the_config_says_why(config_file):
    config = load_config([str(config_file)])
    options = DataPipelineOptions.parse(batch_size=100, num_workers_per_gpu=1)  # no config_args
    with build_data_loader(config.typed_value("train"), options) as loader:
        with pytest.raises(DatasetError, match="a DataLoader worker cannot rebuild the dataset: .*__returnn_config__"):
            list(loader.iter_epoch(1))


_CRASHING_SCRIPT = """\
import os

import numpy as np

from returnn.datasets.generating import StaticDataset
from returnn.torch.data import DataPipelineOptions, build_data_loader

if __name__ == "__main__":
    dataset = StaticDataset(data=[{"data": np.zeros((3, 2), dtype=np.float32)}] * 4)
    options = DataPipelineOptions.parse(batch_size=100, num_workers_per_gpu=1)
    loader = build_data_loader(dataset, options)
    next(loader.iter_epoch(1))
    children = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as file:
            children += file.read().split()
    print(" ".join(children), flush=True)
    raise RuntimeError("crash in the training step")
"""


def test_a_crash_in_the_main_process_leaves_no_worker_processes(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(_CRASHING_SCRIPT))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and "RuntimeError: crash in the training step" in result.stderr
    children = [int(pid) for pid in result.stdout.split()]
    assert len(children) >= 1  # the worker (and multiprocessing's resource tracker)
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _running(pid)]


def test_spawned_worker_does_not_execute_the_config_for_a_dataset_without_config_functions(tmp_path):
    marker = tmp_path / "executions.txt"
    path = tmp_path / "plain.config"
    path.write_text(
        "#!rnn.py\n"
        f"with open({str(marker)!r}, 'a') as f:\n"
        "    f.write('executed\\n')\n"
        "train = {'class': 'DummyDataset', 'input_dim': 2, 'output_dim': 3, 'num_seqs': 4, 'seq_len': 3}\n"
        "num_workers_per_gpu = 1\n"
    )
    try:
        config = load_config([str(path)])
        options = DataPipelineOptions.from_config(config)
        assert options.config_args and options.num_workers == 1
        from returnn.datasets import init_dataset

        with build_data_loader(init_dataset(config.typed_value("train")), options) as loader:
            assert sum(batch["data"].shape[0] for batch in loader.iter_epoch(1)) == 4
    finally:
        sys.modules.pop(Config.MODULE_NAME, None)
    assert marker.read_text() == "executed\n"  # by load_config in this process only
