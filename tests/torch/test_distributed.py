"""Multi-process training pieces: options, and the collectives on real gloo process groups of forked processes.

Each process-group test forks two processes from the test process (torch is imported already, so this takes a
fraction of a second), which start a :class:`DataParallel` from torchrun's environment variables, run a function and
send its result back. The end-to-end runs under torchrun are in ``test_distributed_run.py``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch

from returnn.config import Config
from returnn.errors import CheckpointError, ConfigError
from returnn.learning_rate_control import load_learning_rate_file
from returnn.log import log
from returnn.torch import distributed
from returnn.torch.distributed import DataParallel, DistributedOptions
from returnn.torch.engine import Engine
from returnn.torch.updater import Updater

GROUP_OPTIONS = DistributedOptions(timeout_sec=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child(func: Callable[..., Any], rank: int, env: dict[str, str], options, queue) -> None:
    torch.set_num_threads(1)  # the forked OpenMP pool of the parent is not usable
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    try:
        if options is None:  # the function starts the process group itself
            result = ("ok", func())
        else:
            with DataParallel.started(options, "cpu") as data_parallel:
                result = ("ok", func(data_parallel))
    except BaseException as exc:  # noqa: B036 - everything goes back to the test
        result = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    queue.put((rank, result))
    queue.close()
    queue.join_thread()
    os._exit(0)


def run_in_processes(func: Callable[..., Any], *, options: DistributedOptions | None = GROUP_OPTIONS) -> list[Any]:
    """``func(data_parallel)`` in two forked processes of one gloo process group; their results by rank.
    With ``options=None``: ``func()`` in two forked processes with torchrun's environment (it starts the group)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    processes = [context.Process(target=_child, args=(func, rank, env, options, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=10)
    for rank in sorted(results):
        status, value = results[rank]
        if status == "error":
            raise AssertionError(f"rank {rank} failed: {value}")
    return [results[rank][1] for rank in sorted(results)]


@pytest.fixture(scope="module")
def optimizer_ready() -> None:
    """A first optimizer step imports parts of torch (seconds); done here once, the forked processes inherit them."""
    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    torch.optim.SGD([param], lr=0.1).step()


# ------------------------------------------------------------------------------------------------------------------
# options, device, seed


def _options(value: Any) -> DistributedOptions:
    return DistributedOptions.from_config(Config({"torch_distributed": value}))


def test_options_defaults_and_mainline_forms():
    assert DistributedOptions.from_config(Config()) == DistributedOptions(None, 1800.0, "grad", None)
    assert _options({}) == DistributedOptions()
    assert _options({"reduce_type": "grad_explicit"}).reduce_type == "grad_explicit"
    assert _options({"reduce_type": "param", "param_sync_step": 10, "timeout_sec": 60}) == DistributedOptions(
        None, 60, "param", 10
    )
    # mainline's form: DistributedDataParallel's arguments in 'options'; 'sync_on_cpu' is accepted and changes nothing
    ddp = {"find_unused_parameters": True, "gradient_as_bucket_view": True}
    assert _options({"options": ddp, "comm_hook": "bf16_compress", "sync_on_cpu": True}) == DistributedOptions(
        options=ddp, comm_hook="bf16_compress"
    )
    assert DistributedOptions().backend_for("cpu") == "gloo"
    assert DistributedOptions().backend_for("cuda:1") == "cpu:gloo,cuda:nccl"
    assert DistributedOptions(backend="gloo").backend_for("cuda") == "gloo"


@pytest.mark.parametrize(
    "value, match",
    [
        ([], r"'torch_distributed': expected a dict"),
        ({"reduce_typ": "grad"}, r"unknown option\(s\) 'reduce_typ'; choose from: \['backend', 'timeout_sec'"),
        ({"class": object}, r"'class' \(a custom DDP wrapper\) is not supported"),
        ({"reduce_type": "avg"}, r"unknown reduce_type 'avg'; choose one of: grad, grad_explicit, param"),
        ({"options": {"find_unused": True}}, r"'options' has \['find_unused'\], which DistributedDataParallel does"),
        ({"options": {"device_ids": [0]}}, r"'options' must not set \['device_ids'\]: the trainer sets them"),
        ({"options": True}, r"'options' must be a dict of DistributedDataParallel arguments, got True"),
        ({"reduce_type": "grad_explicit", "options": {}}, r"'options' is used only with reduce_type 'grad'"),
        ({"comm_hook": "powersgd"}, r"unknown comm_hook 'powersgd'; choose one of: fp16_compress, bf16_compress"),
        ({"reduce_type": "param"}, r"reduce_type 'param' needs 'param_sync_step', an int >= 1 .* got None"),
        ({"param_sync_step": 5}, r"'param_sync_step' is used only with reduce_type 'param'"),
        ({"timeout_sec": 0}, r"'timeout_sec' must be a number > 0, got 0"),
        ({"backend": "nccl"}, r"backend 'nccl' cannot handle CPU tensors.* 'cpu:gloo,cuda:nccl'"),
    ],
)
def test_bad_options(value, match):
    with pytest.raises(ConfigError, match=match):
        _options(value)


def test_process_device_and_seed(monkeypatch):
    assert distributed.process_device("cuda") == "cuda"  # one process
    assert distributed.process_seed(123) == 123
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("RANK", "3")
    assert distributed.process_device("cpu") == "cpu"
    assert distributed.process_device("cuda:0") == "cuda:0"  # an explicit GPU is shared by the processes
    if torch.cuda.device_count() < 4:
        with pytest.raises(ConfigError, match=r"started process 3 on this machine, but only \d GPU\(s\) are visible"):
            distributed.process_device("cuda")
    seeds = {distributed.process_seed(123)}
    monkeypatch.setenv("RANK", "1")
    seeds.add(distributed.process_seed(123))
    assert len(seeds | {123}) == 3 and all(0 <= seed < 2**31 for seed in seeds)


def test_started_without_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(
        ConfigError, match=r"WORLD_SIZE=2 .* MASTER_ADDR and MASTER_PORT are not set; start .* torchrun"
    ):
        with DataParallel.started(DistributedOptions(), "cpu"):
            pass


# ------------------------------------------------------------------------------------------------------------------
# collectives


def test_in_step_keeps_uneven_shards_together():
    def run(dp: DataParallel) -> list[Any]:
        return list(dp.in_step(["a", "b", "c"] if dp.rank == 0 else ["x"]))

    assert run_in_processes(run) == [["a", "b", "c"], ["x", None, None]]


def test_reduce_gradients_averages_over_contributing_processes():
    def run(dp: DataParallel) -> list[Any]:
        both, only_rank1, unused = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
        both.grad = torch.tensor([1.0, 2.0]) if dp.rank == 0 else torch.tensor([3.0, 6.0])
        if dp.rank == 1:
            only_rank1.grad = torch.tensor([4.0, 8.0])
        dp.reduce_gradients([both, only_rank1, unused], contributed=True)
        first = [both.grad.tolist(), only_rank1.grad.tolist(), unused.grad]
        # rank 1 computed no gradients since the last update (its data was done): the average is rank 0's
        both.grad = torch.tensor([1.0, 2.0]) if dp.rank == 0 else None
        dp.reduce_gradients([both], contributed=dp.rank == 0)
        return [first, both.grad.tolist()]

    expected = [[[2.0, 4.0], [2.0, 4.0], None], [1.0, 2.0]]
    assert run_in_processes(run) == [expected, expected]


def test_parameter_averaging_and_module_sync():
    def run(dp: DataParallel) -> list[Any]:
        torch.manual_seed(dp.rank)  # different initializations
        model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        model(torch.randn(4, 2))  # different batch norm statistics
        dp.broadcast_module(model)
        start = [t.tolist() for t in model.state_dict().values()]
        with torch.no_grad():
            model[0].bias.fill_(float(dp.rank))
            model[1].running_mean.fill_(float(dp.rank + 1))
        dp.after_update(list(model.parameters()), num_updates=1)  # param_sync_step 2: not yet
        not_yet = model[0].bias.tolist()
        dp.after_update(list(model.parameters()), num_updates=2)
        averaged = model[0].bias.tolist()
        dp.sync_module(model)  # epoch end: floating buffers averaged too
        return [start, not_yet, averaged, model[1].running_mean.tolist(), model[1].num_batches_tracked.item()]

    rank0, rank1 = run_in_processes(run, options=DistributedOptions(reduce_type="param", param_sync_step=2))
    assert rank0[0] == rank1[0]  # rank 0's parameters and buffers everywhere
    assert (rank0[1], rank1[1]) == ([0.0, 0.0], [1.0, 1.0])
    assert rank0[2:] == rank1[2:] == [[0.5, 0.5], [1.5, 1.5], 1]


def test_grad_mode_module_sync_takes_rank0_buffers():
    def run(dp: DataParallel) -> list[float]:
        norm = torch.nn.BatchNorm1d(2)
        with torch.no_grad():
            norm.running_var.fill_(float(dp.rank + 2))
        dp.sync_module(norm)
        return norm.running_var.tolist()

    assert run_in_processes(run) == [[2.0, 2.0], [2.0, 2.0]]


def test_sum_totals_with_a_process_lacking_names():
    def run(dp: DataParallel) -> Any:
        sums = {"ce": [3.0, 2.0], "fer": [1.0, 4.0]} if dp.rank == 0 else {"ce": [5.0, 6.0], "aux": [1.0, 1.0]}
        return dp.sum_totals(sums, [3 - dp.rank, 10])

    expected = ({"ce": [8.0, 8.0], "fer": [1.0, 4.0], "aux": [1.0, 1.0]}, [5, 20])
    assert run_in_processes(run) == [expected, expected]


def test_check_same_and_gather_to_main():
    def run(dp: DataParallel) -> Any:
        gathered = dp.gather_to_main({"rank": dp.rank})
        dp.check_same(("resume", 3, 12), "where training starts")
        try:
            dp.check_same(("resume", 3 + dp.rank, 12), "where training starts")
        except CheckpointError as exc:
            return gathered, str(exc)
        return gathered, None

    (gathered0, error0), (gathered1, error1) = run_in_processes(run)
    assert (gathered0, gathered1) == ([{"rank": 0}, {"rank": 1}], None)
    assert error0 == error1
    assert error0.startswith(
        "the training processes disagree on where training starts (rank 0: ('resume', 3, 12), rank 1: ('resume', 4, "
        "12)); all processes must see the same files"
    )


def test_updater_keeps_parameters_equal_and_each_process_its_pending_gradients(optimizer_ready):
    def run(dp: DataParallel) -> Any:
        model = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(1.0)
        config = Config(
            {"optimizer": {"class": "sgd"}, "learning_rate": 0.5, "gradient_noise": 0.1, "accum_grad_multiple_step": 2}
        )
        updater = Updater.from_config(config, model, device="cpu", amp_dtype=None, data_parallel=dp)
        torch.manual_seed(dp.rank)  # the processes' own random states differ
        x = torch.tensor([[1.0, 0.0]]) if dp.rank == 0 else torch.tensor([[0.0, 3.0]])
        for step in range(2):
            updater.backward(model(x).sum())
            updater.step(step)
        after_update = model.weight.tolist()
        updater.backward(model(x).sum())  # accumulated, not applied yet
        state = updater.state_dict()
        updater.step(2)
        fresh = Updater.from_config(config, model, device="cpu", amp_dtype=None, data_parallel=dp)
        saved = dp.all_gather(state["pending_grads_by_rank"])[0]  # as read back from rank 0's file
        fresh.load_state_dict({**state, "pending_grads_by_rank": saved}, source="test")
        return after_update, fresh.params[0].grad.tolist(), fresh.has_local_gradients

    (weights0, pending0, has0), (weights1, pending1, has1) = run_in_processes(run)
    assert weights0 == weights1  # the same averaged gradients and the same noise in both processes
    # the gradients summed over the 2 steps, (2, 0) and (0, 6), averaged: (1, 3); lr 0.5: w = (0.5, -0.5) + noise
    assert weights0 != [[0.5, -0.5]]
    assert weights0 == [[pytest.approx(0.5, abs=0.3), pytest.approx(-0.5, abs=0.3)]]
    assert (pending0, pending1, has0, has1) == ([[1.0, 0.0]], [[0.0, 3.0]], True, True)


def test_pending_gradients_of_one_process_go_to_rank0_only(optimizer_ready):
    def run(dp: DataParallel) -> Any:
        model = torch.nn.Linear(1, 1, bias=False)
        updater = Updater.from_config(
            Config({"optimizer": {"class": "sgd"}, "learning_rate": 0.1}), model, device="cpu", amp_dtype=None
        )
        single_process_state = {**updater.state_dict(), "pending_grads": {"weight": torch.tensor([[2.0]])}}
        updater.data_parallel = dp
        updater.load_state_dict(single_process_state, source="test")
        return None if model.weight.grad is None else model.weight.grad.tolist()

    assert run_in_processes(run) == [[[2.0]], None]


def test_other_ranks_log_only_warnings_with_their_rank(tmp_path):
    def run(dp: DataParallel) -> None:
        logger = logging.getLogger("returnn.test")
        logger.info("info line")
        logger.warning("warning line")

    path = tmp_path / "train.log"  # both processes append to it, as with log = ["./returnn.log"]
    log.initialize(logs=[str(path)], verbosity=[5])
    try:
        run_in_processes(run)
    finally:
        log.close()
    assert sorted(path.read_text().splitlines()) == [
        "distributed: processes=2 backend=gloo reduce_type=grad timeout=30s",
        "info line",
        "rank 1: warning line",
        "warning line",
    ]


def test_task_eval_in_two_processes_scores_the_whole_dataset(make_config, tmp_path, optimizer_ready):
    Engine(make_config(num_epochs=1)).train()
    single = load_learning_rate_file(str(tmp_path / "learning_rates"))[1].error["dev_loss_ce"]
    (tmp_path / "learning_rates").unlink()
    run_in_processes(lambda: Engine(make_config(num_epochs=1)).eval(), options=None)
    # each process evaluated its half of the dev data; the score is over both halves
    assert load_learning_rate_file(str(tmp_path / "learning_rates"))[1].error == {
        "dev_loss_ce": pytest.approx(single, rel=1e-6)
    }
