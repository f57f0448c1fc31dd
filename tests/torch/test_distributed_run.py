"""Training with two processes started by torchrun, as pipelines start it, end to end on the CPU (gloo).

Each torchrun run starts three Python processes that import torch, so these tests take seconds each; one uninterrupted
run is shared by the tests that read it.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from returnn.__main__ import main
from returnn.learning_rate_control import load_learning_rate_file

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# A linear frame classifier. train_step notes every batch it sees (per process) in steps.<rank>.txt, and the
# CustomEngine saves each process's parameters after each epoch, so the tests can check what happened in each process.
CONFIG = """\
#!rnn.py
import os
import shutil

import torch

from returnn.torch.engine import Engine

use_horovod = True  # what i6_core's ReturnnTrainingJob writes for several processes
backend = "torch"
device = "cpu"
num_epochs = 2
model = "models/epoch"
learning_rate_file = "learning_rates"
log = ["returnn.log"]
log_verbosity = 5
train = {"class": "DummyDataset", "input_dim": 3, "output_dim": 2, "num_seqs": NUM_SEQS, "seq_len": 4,
         "seq_ordering": "random"}
dev = {"class": "DummyDataset", "input_dim": 3, "output_dim": 2, "num_seqs": 3, "seq_len": 2}
max_seqs = 1
batch_size = 1000
optimizer = {"class": "sgd"}
learning_rate = 0.1
accum_grad_multiple_step = ACCUM
_RANK = os.environ.get("RANK", "0")


def get_model(*, epoch, step, **kwargs):
    return torch.nn.Linear(3, 2)


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    frames = data["data:size1"].sum()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data["classes"].flatten().long(), reduction="sum")
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=frames)
    part = "train" if model.training else "eval"
    with open(f"steps.{_RANK}.txt", "a") as f:
        f.write(f"{part} {run_ctx.epoch} {','.join(data['seq_tag'])} {ce.item()!r} {int(frames)}\\n")


class CustomEngine(Engine):
    def on_epoch_end(self, epoch, scores):
        super().on_epoch_end(epoch, scores)
        torch.save(self.model.state_dict(), f"params.{epoch}.rank{_RANK}.pt")
        if epoch == 1 and _RANK == "0" and SNAPSHOT:  # what a run interrupted after epoch 1 leaves behind
            shutil.copytree("models", "../snapshot/models")
            shutil.copy("learning_rates", "../snapshot/learning_rates")
"""


def write_config(
    run_dir: pathlib.Path, *, num_seqs: int, accum: int = 1, snapshot: bool = False, extra: str = ""
) -> str:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = CONFIG.replace("NUM_SEQS", str(num_seqs)).replace("ACCUM", str(accum)).replace("SNAPSHOT", str(snapshot))
    path = run_dir / "exp.config"
    path.write_text(text + textwrap.dedent(extra))
    return str(path)


def torchrun(
    run_dir: pathlib.Path, *args: str, launcher_args: tuple[str, ...] = (), timeout: float = 120
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2"]
    command += launcher_args
    command += [str(REPO_ROOT / "rnn.py"), "exp.config", *args]
    return subprocess.run(command, cwd=run_dir, capture_output=True, text=True, timeout=timeout)


def read_steps(run_dir: pathlib.Path, rank: int) -> list[tuple[str, int, str, float, int]]:
    """(part, epoch, seq tags, loss sum, frames) of each batch that process ``rank`` saw."""
    lines = (run_dir / f"steps.{rank}.txt").read_text().splitlines()
    return [
        (part, int(epoch), tags, float(loss), int(frames)) for part, epoch, tags, loss, frames in map(str.split, lines)
    ]


def score(steps: list, part: str, epoch: int) -> float:
    chosen = [step for step in steps if step[:2] == (part, epoch)]
    return sum(step[3] for step in chosen) / sum(step[4] for step in chosen)


@pytest.fixture(scope="module")
def uneven_run(tmp_path_factory) -> pathlib.Path:
    """5 sequences over 2 processes (3 and 2 per epoch), one per batch, updates every 2 steps: the last step of an
    epoch has data in rank 0 only, and its gradients are still pending when the epoch ends."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "snapshot").mkdir()
    run_dir = root / "full"
    write_config(run_dir, num_seqs=5, accum=2, snapshot=True)
    result = torchrun(run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_two_processes_share_the_data_and_stay_equal(uneven_run, assert_same_state):
    run_dir = uneven_run
    assert sorted(os.listdir(run_dir / "models")) == [
        "epoch.001.opt.pt",
        "epoch.001.pt",
        "epoch.002.opt.pt",
        "epoch.002.pt",
    ]
    assert not [name for name in os.listdir(run_dir) if ".tmp" in name]
    steps = [read_steps(run_dir, rank) for rank in (0, 1)]
    for epoch in (1, 2):
        tags = [[step[2] for step in process if step[:2] == ("train", epoch)] for process in steps]
        assert (len(tags[0]), len(tags[1])) == (3, 2)
        assert sorted(tags[0] + tags[1]) == [f"seq-{i}" for i in range(5)]  # every sequence once per epoch
        dev_tags = [[step[2] for step in process if step[:2] == ("eval", epoch)] for process in steps]
        assert sorted(dev_tags[0] + dev_tags[1]) == ["seq-0", "seq-1", "seq-2"]
        # parameters equal in both processes, and equal to the checkpoint
        params = [torch.load(run_dir / f"params.{epoch}.rank{rank}.pt", weights_only=True) for rank in (0, 1)]
        assert_same_state(params[0], params[1])
        assert_same_state(params[0], torch.load(run_dir / f"models/epoch.00{epoch}.pt", weights_only=True)["model"])
    # the scores are over the batches of both processes
    epochs = load_learning_rate_file(str(run_dir / "learning_rates"))
    all_steps = steps[0] + steps[1]
    for epoch in (1, 2):
        assert epochs[epoch].error == {
            "train_loss_ce": pytest.approx(score(all_steps, "train", epoch), rel=1e-6),
            "dev_loss_ce": pytest.approx(score(all_steps, "eval", epoch), rel=1e-6),
        }
    optimizer = torch.load(run_dir / "models/epoch.001.opt.pt", weights_only=True)
    rank0_pending, rank1_pending = optimizer["pending_grads_by_rank"]
    assert (sorted(rank0_pending), rank1_pending) == (["bias", "weight"], None)  # rank 1 had no data in step 3
    log_lines = (run_dir / "returnn.log").read_text().splitlines()
    assert sum(line.startswith("distributed: processes=2 backend=gloo reduce_type=grad") for line in log_lines) == 1
    assert sum(line.startswith("epoch=2 train_loss_ce=") for line in log_lines) == 1
    assert not [line for line in log_lines if line.startswith("rank 1:")]  # no warnings


def test_resumed_two_process_run_equals_uninterrupted(uneven_run, assert_same_state):
    resumed = uneven_run.parent / "snapshot"
    write_config(resumed, num_seqs=5, accum=2)
    assert sorted(os.listdir(resumed / "models")) == ["epoch.001.opt.pt", "epoch.001.pt"]
    result = torchrun(resumed)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("epoch.002.pt", "epoch.002.opt.pt"):
        full = torch.load(uneven_run / "models" / name, weights_only=True)
        assert_same_state(full, torch.load(resumed / "models" / name, weights_only=True))
    assert (resumed / "learning_rates").read_text() == (uneven_run / "learning_rates").read_text()
    assert "start=resume" in (resumed / "returnn.log").read_text()


def test_two_processes_equal_one_process_on_both_shards(tmp_path, monkeypatch, assert_same_state):
    # 8 sequences, one per batch: in step k, rank 0 trains on sequence 2k and rank 1 on 2k + 1 of the epoch's order.
    # Averaged over the 2 processes with learning rate 0.2, that is one process accumulating over 2 steps with 0.1.
    write_config(tmp_path / "two", num_seqs=8, extra="learning_rate = 0.2\n")
    result = torchrun(tmp_path / "two")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = write_config(tmp_path / "one", num_seqs=8, accum=2)
    monkeypatch.chdir(tmp_path / "one")
    assert main([one]) == 0
    for epoch in (1, 2):
        two_params = torch.load(tmp_path / f"two/models/epoch.00{epoch}.pt", weights_only=True)["model"]
        one_params = torch.load(tmp_path / f"one/models/epoch.00{epoch}.pt", weights_only=True)["model"]
        assert_same_state(two_params, one_params)
    two_scores = load_learning_rate_file(str(tmp_path / "two/learning_rates"))
    one_scores = load_learning_rate_file(str(tmp_path / "one/learning_rates"))
    for epoch in (1, 2):
        assert two_scores[epoch].error == pytest.approx(one_scores[epoch].error, rel=1e-6)


def test_an_error_in_one_process_stops_all(tmp_path):
    extra = """
        torch_distributed = {"timeout_sec": 60}
        _train_step = train_step


        def train_step(*, model, data, run_ctx, **kwargs):
            if _RANK == "1" and run_ctx.global_step == 1:
                raise RuntimeError("broken batch in rank 1")
            _train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
    """
    write_config(tmp_path, num_seqs=8, extra=extra)
    start = time.monotonic()
    result = torchrun(tmp_path)
    assert result.returncode != 0
    assert time.monotonic() - start < 50  # torchrun stops rank 0, which waits for rank 1 in step 2
    assert "RuntimeError: broken batch in rank 1" in result.stderr
    assert not os.path.exists(tmp_path / "models")
    assert [step[:2] for step in read_steps(tmp_path, 0)] == [("train", 1), ("train", 1)]


def test_sigterm_to_torchrun_mid_epoch_then_restart_equals_uninterrupted(uneven_run, tmp_path, assert_same_state):
    # both processes wait in global step 3 (the first of epoch 2) until they got the signal that torchrun passes on
    extra = """
        import time

        _train_step = train_step


        def train_step(*, model, data, run_ctx, **kwargs):
            _train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
            if model.training and run_ctx.global_step == 3:
                open(f"reached.{_RANK}", "w").close()
                deadline = time.monotonic() + 60
                while run_ctx.engine.run_control.signals.received is None and time.monotonic() < deadline:
                    time.sleep(0.02)
    """
    write_config(tmp_path, num_seqs=5, accum=2, extra=extra)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2"]
    pipe = subprocess.PIPE
    process = subprocess.Popen(
        [*command, str(REPO_ROOT / "rnn.py"), "exp.config"], cwd=tmp_path, stdout=pipe, stderr=pipe
    )
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"reached.{rank}").exists() for rank in (0, 1)):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0  # torchrun's own code; the processes' last lines say why
    assert "received SIGTERM: stopped in epoch 2 after step 1 of it (global_step=4)" in stderr.decode()
    mid = torch.load(tmp_path / "models" / "epoch.mid_epoch.pt", weights_only=True)
    assert [process["num_batches"] for process in mid["processes"]] == [1, 1]
    result = torchrun(tmp_path)  # the same command again
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    full = torch.load(uneven_run / "models" / "epoch.002.pt", weights_only=True)
    assert_same_state(full, torch.load(tmp_path / "models" / "epoch.002.pt", weights_only=True))
    full_opt = torch.load(uneven_run / "models" / "epoch.002.opt.pt", weights_only=True)
    resumed_opt = torch.load(tmp_path / "models" / "epoch.002.opt.pt", weights_only=True)
    assert_same_state(full_opt["optimizer"], resumed_opt["optimizer"])
    for full_grads, resumed_grads in zip(full_opt["pending_grads_by_rank"], resumed_opt["pending_grads_by_rank"]):
        assert_same_state(full_grads or {}, resumed_grads or {})
    assert (tmp_path / "learning_rates").read_text() == (uneven_run / "learning_rates").read_text()
    assert sorted(os.listdir(tmp_path / "models")) == sorted(os.listdir(uneven_run / "models"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_agents(
    directories: list[pathlib.Path],
    *,
    nproc_per_node: int = 1,
    launcher_args: tuple[str, ...] = (),
    timeout: float = 180,
) -> None:
    """Two torchrun agents, as on two machines, meeting at a c10d rendezvous on localhost; each runs rnn.py in its
    directory (the same directory twice: a shared file system). Both must end with exit code 0."""
    endpoint = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--nproc-per-node={nproc_per_node}"]
    command += [*launcher_args, "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=test"]
    command += [str(REPO_ROOT / "rnn.py"), "exp.config"]
    agents = [
        subprocess.Popen(command, cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for directory in directories
    ]
    outputs = [agent.communicate(timeout=timeout)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]


# train_step also notes the process's environment (LOCAL_RANK, WORLD_SIZE, the restart count) in env.<rank>.txt
NOTE_ENVIRONMENT = """
_train_step = train_step


def train_step(*, model, data, run_ctx, **kwargs):
    _train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
    with open(f"env.{_RANK}.txt", "w") as f:
        f.write(f"{os.environ['LOCAL_RANK']} {os.environ['WORLD_SIZE']} {os.environ.get('TORCHELASTIC_RESTART_COUNT')}")
"""


def test_two_nodes_by_c10d_rendezvous_on_localhost(uneven_run, tmp_path, assert_same_state):
    # two torchrun agents, one process each, meet at a c10d rendezvous endpoint, as on two machines; each runs in
    # its own directory, so that the files show which process wrote what
    nodes = [tmp_path / f"node{i}" for i in range(2)]
    for node in nodes:
        write_config(node, num_seqs=5, accum=2, extra=NOTE_ENVIRONMENT)
    run_two_agents(nodes, timeout=120)
    ranks = sorted(
        (int(path.name.split(".")[1]), path.read_text()) for node in nodes for path in node.glob("env.*.txt")
    )
    assert ranks == [(0, "0 2 0"), (1, "0 2 0")]  # global ranks 0 and 1, each local rank 0 on its node
    writer = next(node for node in nodes if (node / "env.0.txt").exists())
    other = next(node for node in nodes if node != writer)
    assert not (other / "models").exists() and not (other / "learning_rates").exists()  # one writer
    assert_same_state(
        torch.load(writer / "models/epoch.002.pt", weights_only=True)["model"],
        torch.load(uneven_run / "models/epoch.002.pt", weights_only=True)["model"],
    )


def test_two_nodes_with_two_processes_each_have_local_ranks_and_one_writer(tmp_path):
    # two agents of 2 processes each, as on two machines with 2 GPUs: global ranks 0..3, local ranks 0 and 1 on each
    nodes = [tmp_path / f"node{i}" for i in range(2)]
    for node in nodes:
        write_config(node, num_seqs=8, extra=NOTE_ENVIRONMENT)
    run_two_agents(nodes, nproc_per_node=2, timeout=180)
    by_node = [
        sorted((int(path.name.split(".")[1]), path.read_text()) for path in node.glob("env.*.txt")) for node in nodes
    ]
    assert sorted(by_node) == [
        [(0, "0 4 0"), (1, "1 4 0")],  # the node of global ranks 0 and 1, as local ranks 0 and 1
        [(2, "0 4 0"), (3, "1 4 0")],
    ]
    writer = next(node for node, ranks in zip(nodes, by_node) if ranks[0][0] == 0)
    other = next(node for node in nodes if node != writer)
    assert (writer / "models" / "epoch.002.pt").exists()
    assert not (other / "models").exists() and not (other / "learning_rates").exists()
    seqs = sorted(tag for node in nodes for rank in range(4) if (node / f"steps.{rank}.txt").exists()
                  for part, epoch, tag, *_ in read_steps(node, rank) if (part, epoch) == ("train", 1))  # fmt: skip
    assert len(seqs) == 8 and len(set(seqs)) == 8  # every sequence once, over the 4 processes


def test_elastic_restart_after_a_killed_worker_resumes_and_ends_as_uninterrupted(
    uneven_run, tmp_path, assert_same_state
):
    # rank 1 is killed in epoch 2 of the first attempt; torchrun restarts both processes, which continue after
    # epoch 1 (in a fresh namespace of torchrun's store) and end with the uninterrupted run's model
    extra = (
        NOTE_ENVIRONMENT
        + """\
    if _RANK == "1" and run_ctx.epoch == 2 and not os.path.exists("killed"):
        open("killed", "w").close()
        os.kill(os.getpid(), 9)
"""
    )
    write_config(tmp_path, num_seqs=5, accum=2, extra=extra)
    result = torchrun(tmp_path, launcher_args=("--max-restarts=1",))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "killed").exists()
    assert (tmp_path / "env.1.txt").read_text() == "1 2 1"  # written last by the restarted attempt
    for name in ("epoch.002.pt", "epoch.002.opt.pt"):
        full = torch.load(uneven_run / "models" / name, weights_only=True)
        assert_same_state(full, torch.load(tmp_path / "models" / name, weights_only=True))
    assert (tmp_path / "learning_rates").read_text() == (uneven_run / "learning_rates").read_text()


# each process notes its batches of epoch 2 in epoch2.<rank>.txt; at its third one (after the first update of the
# epoch, whose checkpoint it resumes from), rank 1 is killed while rank 0 is in a long step
KILL_MID_EPOCH = """
    if run_ctx.epoch == 2 and model.training and not os.path.exists("killed"):
        with open(f"epoch2.{_RANK}.txt", "a") as f:
            f.write("batch\\n")
        if len(open(f"epoch2.{_RANK}.txt").readlines()) == 3:
            if _RANK == "0":
                time.sleep(40)  # its agent restarts it before (when the other agent rejoins)
            else:
                open("killed", "w").close()
                os.kill(os.getpid(), 9)


import time
"""
MID_EPOCH_CHECKPOINTS = """
checkpoint_interval_steps = 1
torch_distributed = {"timeout_sec": 60}
"""


def test_two_nodes_restart_after_a_killed_worker_from_a_mid_epoch_checkpoint(tmp_path, assert_same_state):
    # two torchrun agents (as on two machines, sharing the run directory): only the agent of the killed worker counts
    # a restart, the other one restarts its worker because the first rejoined. The processes of the next attempt find
    # each other all the same, continue from the checkpoint after the first update of epoch 2, and end with the
    # model of an uninterrupted run.
    reference = tmp_path / "uninterrupted"
    write_config(reference, num_seqs=9, accum=2, extra=NOTE_ENVIRONMENT + MID_EPOCH_CHECKPOINTS)
    result = torchrun(reference)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "restarted"
    write_config(run_dir, num_seqs=9, accum=2, extra=NOTE_ENVIRONMENT + KILL_MID_EPOCH + MID_EPOCH_CHECKPOINTS)
    run_two_agents([run_dir, run_dir], launcher_args=("--max-restarts=2",), timeout=240)
    assert (run_dir / "killed").exists()
    restart_counts = sorted(path.read_text().split()[2] for path in run_dir.glob("env.*.txt"))
    assert restart_counts == ["0", "1"]  # one agent counted the restart, the other did not
    assert re.search(r"train: resuming epoch=2 after [1-9]\d* batches", (run_dir / "returnn.log").read_text())
    for name in ("epoch.002.pt", "epoch.002.opt.pt"):
        full = torch.load(reference / "models" / name, weights_only=True)
        assert_same_state(full, torch.load(run_dir / "models" / name, weights_only=True))
    assert (run_dir / "learning_rates").read_text() == (reference / "learning_rates").read_text()
