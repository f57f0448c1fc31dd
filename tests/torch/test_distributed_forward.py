"""Task forward with two processes started by torchrun (CPU, gloo): the output_file equals the one process's."""

from __future__ import annotations

import os
import pathlib
import re
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


def assert_same_hdf(two: pathlib.Path, one: pathlib.Path, num_seqs: int) -> None:
    """The file of two processes holds the sequences of one process's file, in the same order."""
    assert hdf_structure(two) == hdf_structure(one)
    two_seqs, one_seqs = read_back(two), read_back(one)
    assert [tag for tag, _ in two_seqs] == [tag for tag, _ in one_seqs] == [f"seq-{i}" for i in range(num_seqs)]
    for (_, two_values), (_, one_values) in zip(two_seqs, one_seqs):
        np.testing.assert_allclose(two_values, one_values, rtol=1e-5, atol=1e-6)


def run_two_processes(directory: pathlib.Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2"]
    return subprocess.run(
        [*command, str(REPO_ROOT / "rnn.py"), "exp.config"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def one_and_two_processes(tmp_path, monkeypatch, config: str) -> tuple[pathlib.Path, pathlib.Path]:
    """Run ``config`` in ``one/`` as one process and in ``two/`` with torchrun and 2 processes."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "exp.config").write_text(config)
    result = run_two_processes(tmp_path / "two")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    monkeypatch.chdir(tmp_path / "one")
    assert main(["exp.config"]) == 0
    return tmp_path / "one", tmp_path / "two"


@pytest.mark.parametrize("kind, num_seqs", [("network", 9), ("mainline", 9), ("network", 2)])
def test_two_process_forward_writes_the_one_process_output_file(tmp_path, monkeypatch, kind, num_seqs):
    one_and_two_processes(tmp_path, monkeypatch, CONFIGS[kind].replace("NUM_SEQS", str(num_seqs)))
    assert sorted(os.listdir(tmp_path / "two")) == ["exp.config", "out.hdf", "returnn.log"]  # the parts are gone
    assert_same_hdf(tmp_path / "two" / "out.hdf", tmp_path / "one" / "out.hdf", num_seqs)
    log = (tmp_path / "two" / "returnn.log").read_text()
    assert f"forward: merged 2 parts ({num_seqs} sequences) into out.hdf" in log  # an empty part from rank 1 with 2
    assert f"forward: batches={(num_seqs + 1) // 2} epoch=0 processes=2" in log


# Mini-RETURNN's forward hooks as recognition and prior set-ups write them: an HDF file, a search_out.py, and priors
# summed over all processes and written by rank 0
HOOKS = (
    COMMON.replace('output_file = "out.hdf"\n', "")
    + """
import numpy
import torch
from returnn.datasets.hdf import SimpleHDFWriter


def get_model(*, epoch, step, **_kwargs):
    return torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def forward_init_hook(run_ctx, **kwargs):
    run_ctx.hdf_writer = SimpleHDFWriter("output.hdf", dim=2, ndim=2)
    run_ctx.search_out = open("search_out.py", "wt")
    run_ctx.search_out.write("{\\n")
    run_ctx.sum_probs = torch.zeros(2)
    run_ctx.num_frames = 0


def forward_step(*, model, data, run_ctx, **kwargs):
    lengths = data["data:size1"]
    logits = model(data["data"])
    run_ctx.hdf_writer.insert_batch(logits.numpy(), lengths.numpy(), data["seq_tag"])
    for b, tag in enumerate(data["seq_tag"]):
        probs = logits[b, : lengths[b]].softmax(-1)
        run_ctx.sum_probs += probs.sum(0)
        run_ctx.num_frames += int(lengths[b])
        run_ctx.search_out.write("%r: %r,\\n" % (tag, probs.argmax(-1).tolist()))


def forward_finish_hook(run_ctx, **kwargs):
    run_ctx.hdf_writer.close()
    run_ctx.search_out.write("}\\n")
    run_ctx.search_out.close()
    parts = run_ctx.all_gather((run_ctx.sum_probs, run_ctx.num_frames))
    if run_ctx.rank == 0:
        total = sum(probs for probs, _ in parts) / sum(frames for _, frames in parts)
        numpy.savetxt("prior.txt", total.log().numpy())
"""
)


@pytest.mark.parametrize("num_seqs", [9, 2])
def test_the_files_of_a_configs_own_forward_hooks_are_those_of_one_process(tmp_path, monkeypatch, num_seqs):
    one, two = one_and_two_processes(tmp_path, monkeypatch, HOOKS.replace("NUM_SEQS", str(num_seqs)))
    expected = ["exp.config", "output.hdf", "prior.txt", "returnn.log", "search_out.py"]
    assert sorted(os.listdir(two)) == expected  # forward-parts/ is gone
    assert_same_hdf(two / "output.hdf", one / "output.hdf", num_seqs)
    assert (two / "search_out.py").read_text() == (one / "search_out.py").read_text()
    np.testing.assert_allclose(np.loadtxt(two / "prior.txt"), np.loadtxt(one / "prior.txt"), rtol=1e-5)
    log = (two / "returnn.log").read_text()
    assert f"forward: wrote output.hdf (HDF, {num_seqs} sequences from 2 processes)" in log
    assert f"forward: wrote search_out.py (dict, {num_seqs} sequences from 2 processes)" in log
    assert "forward: wrote prior.txt (written by rank0 alone)" in log


# mainline's forward_step with a forward_callback that writes what it gets
CALLBACK = (
    CONFIGS["mainline"].replace('output_file = "out.hdf"\n', "")
    + """
from returnn.forward_iface import ForwardCallbackIface


class Callback(ForwardCallbackIface):
    def init(self, *, model):
        self.file = open("callback.txt", "w")
        self.file.write(f"init {type(model).__name__}\\n")

    def process_seq(self, *, seq_tag, outputs):
        output = outputs["output"].raw_tensor
        self.file.write(f"{seq_tag} {output.shape} {output.sum():.5f}\\n")

    def finish(self):
        self.file.write("finish\\n")
        self.file.close()


forward_callback = Callback
"""
)


def test_a_forward_callback_sees_every_sequence_once_in_rank_0_in_the_order_of_one_process(tmp_path, monkeypatch):
    one, two = one_and_two_processes(tmp_path, monkeypatch, CALLBACK.replace("NUM_SEQS", "9"))
    assert sorted(os.listdir(two)) == ["callback.txt", "exp.config", "returnn.log"]
    one_lines, two_lines = (path.read_text().splitlines() for path in (one / "callback.txt", two / "callback.txt"))
    assert two_lines[0] == one_lines[0] == "init Sequential" and two_lines[-1] == one_lines[-1] == "finish"
    assert len(two_lines) == len(one_lines) == 11
    for two_line, one_line in zip(two_lines[1:-1], one_lines[1:-1]):
        (two_tag, two_shape, two_sum), (one_tag, one_shape, one_sum) = two_line.rsplit(" ", 2), one_line.rsplit(" ", 2)
        assert (two_tag, two_shape) == (one_tag, one_shape)
        assert float(two_sum) == pytest.approx(float(one_sum), rel=1e-4, abs=1e-4)
    assert [line.split()[0] for line in two_lines[1:-1]] == [f"seq-{i}" for i in range(9)]
    assert "forward: forward_callback got the 9 sequences of 2 processes" in (two / "returnn.log").read_text()


def test_a_forward_callback_gets_the_epochs_order_also_from_shards_with_workers(tmp_path, monkeypatch):
    # each of the 2 workers of a process batches every 4th sequence: a process gets positions 0, 4, 2, 6, 1, 5, ...
    # (one process with 2 workers hands them over as they come, 0, 2, 1, 3, ...; the values are the same)
    config = CALLBACK.replace("NUM_SEQS", "13") + 'batching_scope = "shard"\nnum_workers_per_gpu = 2\n'
    one, two = one_and_two_processes(tmp_path, monkeypatch, config)
    one_lines, two_lines = ((directory / "callback.txt").read_text().splitlines()[1:-1] for directory in (one, two))
    assert [line.split()[0] for line in two_lines] == [f"seq-{i}" for i in range(13)]
    assert sorted(two_lines) == sorted(one_lines)  # the same shapes and sums


@pytest.mark.parametrize(
    "kind, message",
    [
        (
            "hooks",
            r"forward under torchrun: the processes of rank 1 do not see the files of rank 0 in .*forward-parts \(each "
            r"node has a working directory of its own\?\); rank 0 merges the outputs of all processes, so all must "
            r"run in one working directory on a shared file system",
        ),
        (
            "network",
            r"forward under torchrun: rank 0 cannot find the parts out.hdf.part1 that the other processes wrote, so it "
            r"cannot merge them into 'out.hdf'; the output_file must lie on a file system that all processes share",
        ),
    ],
)
def test_processes_that_do_not_share_the_working_directory_stop_with_a_clear_error(tmp_path, kind, message):
    elsewhere = tmp_path / "node2"  # rank 1 works in a directory of its own, as on a node without a shared one
    elsewhere.mkdir()
    (elsewhere / "forward-parts" / "rank1").mkdir(parents=True)  # an earlier run's parts, which rank 0 cannot remove
    (elsewhere / "forward-parts" / "rank0-was-here").write_text("an earlier run's marker")
    config = HOOKS if kind == "hooks" else CONFIGS[kind]
    config = f"import os\nif os.environ['RANK'] == '1':\n    os.chdir({str(elsewhere)!r})\n" + config
    (tmp_path / "exp.config").write_text(config.replace("NUM_SEQS", "9"))
    result = run_two_processes(tmp_path)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stderr[-3000:]
    assert not (tmp_path / "output.hdf").exists() and not (tmp_path / "out.hdf").exists()


@pytest.mark.parametrize(
    "hook, message",
    [
        (
            'open("count.txt", "w").write(f"{run_ctx.num_frames}\\\\n")',
            r"forward: 2 processes wrote different files 'count.txt', which cannot be merged",
        ),
        ('open("vocab.txt").read()', r"the hooks and forward_step run in .*forward-parts/rank\d, where relative paths"),
    ],
)
def test_hooks_that_cannot_run_in_several_processes_stop_with_a_clear_error(tmp_path, hook, message):
    config = HOOKS.replace("NUM_SEQS", "9").replace(
        "    parts = run_ctx.all_gather", f"    {hook}\n    parts = run_ctx.all_gather"
    )
    (tmp_path / "exp.config").write_text(config)
    (tmp_path / "vocab.txt").write_text("a\n")
    result = run_two_processes(tmp_path)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stderr[-3000:]
    assert not (tmp_path / "output.hdf").exists()
    if "count.txt" in hook:  # the parts are kept
        assert sorted(os.listdir(tmp_path / "forward-parts")) == ["rank0", "rank0-was-here", "rank1"]
        assert (tmp_path / "forward-parts" / "rank1" / "count.txt").exists()


def test_a_file_written_by_every_process_outside_its_directory_is_warned_about_and_appending_appends(tmp_path):
    shared = tmp_path / "shared.txt"  # an absolute path: every process writes it, each with its share
    config = HOOKS.replace("NUM_SEQS", "9").replace(
        "    parts = run_ctx.all_gather",
        f"    open({str(shared)!r}, 'w').write(str(run_ctx.num_frames))\n"
        "    if run_ctx.rank == 0:\n"
        "        open('summary.txt', 'a').write('run 2\\n')\n"
        "    parts = run_ctx.all_gather",
    )
    (tmp_path / "exp.config").write_text(config)
    (tmp_path / "summary.txt").write_text("run 1\n")
    result = run_two_processes(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "summary.txt").read_text() == "run 1\nrun 2\n"  # as one process appends
    log = (tmp_path / "returnn.log").read_text()
    assert "forward: wrote summary.txt (appended to the existing file)" in log
    assert f"forward: several processes wrote the same files outside their directories ({shared}): unless" in log
