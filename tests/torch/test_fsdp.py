"""reduce_type "fsdp" (FSDP2 sharding the config's module in place) against DDP and one process, in forked processes
of a gloo process group (see ``test_distributed.run_in_processes``)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch

from returnn.config import Config
from returnn.errors import ConfigError
from returnn.learning_rate_control import load_learning_rate_file
from returnn.torch import distributed
from returnn.torch.distributed import DistributedOptions
from returnn.torch.engine import Engine
from returnn.torch.fsdp import FsdpStep
from tests.torch.test_distributed import run_in_processes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def optimizers_ready() -> None:
    """First optimizer steps import parts of torch (seconds); done here once, the forked processes inherit them."""
    for optimizer_class in (torch.optim.SGD, torch.optim.Adam):
        param = torch.nn.Parameter(torch.zeros(1))
        param.grad = torch.zeros(1)
        optimizer_class([param], lr=0.1).step()


FSDP = {"reduce_type": "fsdp", "fsdp_modules": ["Block"]}


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))


class BlockModel(torch.nn.Module):
    """Two blocks (units of their own under FSDP) between an input and an output layer (in the root unit)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(5, 8)
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """What a step may call instead of ``forward`` (under FSDP named in ``fsdp_forward_methods``)."""
        return self.forward(x)


def get_model(*, epoch: int, step: int, **kwargs: Any) -> torch.nn.Module:
    return BlockModel()


def train_step(*, model: BlockModel, data: dict[str, Any], run_ctx: Any, **kwargs: Any) -> None:
    logits = model(data["data"].float())
    mask = torch.arange(logits.shape[1])[None, :] < data["data:size1"][:, None]
    ce = torch.nn.functional.cross_entropy(logits[mask], data["classes"][mask].long(), reduction="sum")
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=mask.sum())


def train_step_summed(*, model: BlockModel, data: dict[str, Any], run_ctx: Any, **kwargs: Any) -> None:
    """The loss times the number of processes: their averaged gradients are the sum, as in one process."""
    logits = model(data["data"].float())
    mask = torch.arange(logits.shape[1])[None, :] < data["data:size1"][:, None]
    ce = torch.nn.functional.cross_entropy(logits[mask], data["classes"][mask].long(), reduction="sum")
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=mask.sum(), scale=distributed.world_size())


def train_step_by_method(*, model: BlockModel, data: dict[str, Any], run_ctx: Any, **kwargs: Any) -> None:
    logits = model.logits(data["data"].float())
    mask = torch.arange(logits.shape[1])[None, :] < data["data:size1"][:, None]
    ce = torch.nn.functional.cross_entropy(logits[mask], data["classes"][mask].long(), reduction="sum")
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=mask.sum())


def _dataset(num_seqs: int) -> dict[str, Any]:
    return {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": num_seqs, "seq_len": 4}


def _train(make_config, run_dir: str, *, processes: int, num_epochs: int = 2, **overrides: Any) -> Config:
    """Train up to ``num_epochs`` in ``run_dir`` (continuing what is there); the config."""
    options = dict(get_model=get_model, train_step=train_step, optimizer={"class": "adam"}, learning_rate=0.01)
    overrides = {**options, "num_epochs": num_epochs, **overrides}
    if processes > 1:  # a hung collective fails after 30 s with the place it hung in, before the harness gives up
        overrides["torch_distributed"] = {"timeout_sec": 30, **overrides.get("torch_distributed", {})}
    config = make_config(run_dir=run_dir, **overrides)
    if processes == 1:
        Engine(config).train()
    else:
        run_in_processes(lambda: Engine(config).train(), options=None)
    return config


def _load(config: Config, epoch: int, suffix: str = "pt") -> dict[str, Any]:
    return torch.load(f"{config.value('model')}.{epoch:03d}.{suffix}", weights_only=True)


def _assert_close(a: dict[str, Any], b: dict[str, Any], *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert type(a[name]) is torch.Tensor, f"{name}: {type(a[name]).__name__}, not a plain tensor"
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def test_fsdp_equals_ddp_with_clipping_accumulation_uneven_rounds_and_evaluation(make_config):
    # 11 training sequences, one per batch: in the last step of each epoch only rank 0 has data, and rank 1 repeats
    # its last batch with zero gradients. 3 dev sequences: rank 1 evaluates one batch, rank 0 two.
    common = dict(
        train=_dataset(11), dev=_dataset(3), max_seqs=1, accum_grad_multiple_step=2, gradient_clip=0.05,
        gradient_clip_norm=0.5,
    )  # fmt: skip
    ddp = _train(make_config, "ddp", processes=2, **common)
    fsdp = _train(make_config, "fsdp", processes=2, torch_distributed=FSDP, **common)
    assert not torch.equal(_load(ddp, 1)["model"]["out.weight"], _load(ddp, 2)["model"]["out.weight"])  # it trained
    for epoch in (1, 2):
        _assert_close(_load(fsdp, epoch)["model"], _load(ddp, epoch)["model"])
    fsdp_optimizer, ddp_optimizer = _load(fsdp, 2, "opt.pt"), _load(ddp, 2, "opt.pt")
    assert fsdp_optimizer["param_names"] == ddp_optimizer["param_names"]
    assert fsdp_optimizer["optimizer"]["param_groups"] == ddp_optimizer["optimizer"]["param_groups"]
    for index, state in ddp_optimizer["optimizer"]["state"].items():
        _assert_close(fsdp_optimizer["optimizer"]["state"][index], state)
    fsdp_scores = load_learning_rate_file(fsdp.value("learning_rate_file"))
    ddp_scores = load_learning_rate_file(ddp.value("learning_rate_file"))
    for epoch in (1, 2):
        assert fsdp_scores[epoch].scores.keys() == ddp_scores[epoch].scores.keys() == {"train_loss_ce", "dev_loss_ce"}
        for key, value in ddp_scores[epoch].scores.items():
            assert fsdp_scores[epoch].scores[key] == pytest.approx(value, rel=1e-5)


def test_fsdp_resumes_from_checkpoints_of_one_process_and_of_fsdp(make_config):
    # 40 sequences, 5 per batch: 8 batches per epoch. One process accumulating 4 steps and two accumulating 2 (with
    # the loss scaled by 2: their average is the sum of the 4 batches) compute the same gradients, and with the
    # optimizer state of the checkpoint, the same Adam updates.
    common = dict(train=_dataset(40), dev=None, batch_size=20, train_step=train_step_summed)
    one = dict(processes=1, accum_grad_multiple_step=4, **common)
    fsdp = dict(processes=2, accum_grad_multiple_step=2, torch_distributed=FSDP, **common)
    reference = _load(_train(make_config, "one", **one), 2)["model"]
    steps_per_epoch = {"one": 8, "fsdp": 4}
    for first, then in (("one", "fsdp"), ("fsdp", "fsdp"), ("fsdp", "one")):
        run_dir = f"{first}_then_{then}"
        _train(make_config, run_dir, num_epochs=1, **(one if first == "one" else fsdp))
        resumed = _train(make_config, run_dir, num_epochs=2, **(one if then == "one" else fsdp))
        assert _load(resumed, 2)["step"] == steps_per_epoch[first] + steps_per_epoch[then]
        _assert_close(_load(resumed, 2)["model"], reference, rtol=1e-4, atol=1e-6)


def test_fsdp_bfloat16_parameters_with_cpu_offload_train_close_to_float32(make_config):
    common = dict(train=_dataset(8), dev=None, max_seqs=1, num_epochs=1, optimizer={"class": "sgd"}, learning_rate=0.5)
    fsdp32 = _load(_train(make_config, "fsdp32", processes=2, torch_distributed=FSDP, **common), 1)["model"]
    mixed = {**FSDP, "param_dtype": "bfloat16", "reduce_dtype": "float32", "cpu_offload": True}
    fsdp16 = _load(_train(make_config, "fsdp16", processes=2, torch_distributed=mixed, **common), 1)["model"]
    assert not torch.equal(fsdp16["inp.weight"], fsdp32["inp.weight"])  # the forward ran in bfloat16
    _assert_close(fsdp16, fsdp32, rtol=0, atol=0.01)  # the shards stay float32: the updates differ a little


def test_a_step_that_calls_a_method_named_in_fsdp_forward_methods_equals_ddp(make_config):
    common = dict(train=_dataset(4), dev=_dataset(2), max_seqs=1, num_epochs=1, train_step=train_step_by_method)
    ddp = _load(_train(make_config, "ddp", processes=2, **common), 1)["model"]
    by_method = {**FSDP, "fsdp_forward_methods": ["logits"]}
    _assert_close(
        _load(_train(make_config, "fsdp", processes=2, torch_distributed=by_method, **common), 1)["model"], ddp
    )


@pytest.mark.parametrize(
    "value, match",
    [
        ({"reduce_type": "fsdp", "fsdp_modules": "Block"}, r"'fsdp_modules' must be a list of module class names"),
        ({"reduce_type": "fsdp", "param_dtype": "bf16"}, r"unknown param_dtype 'bf16'; choose one of: float32, bf"),
        ({"reduce_type": "fsdp", "reduce_dtype": torch.float16}, r"unknown reduce_dtype torch.float16; choose one"),
        ({"reduce_type": "fsdp", "cpu_offload": 1}, r"'cpu_offload' must be True or False, got 1"),
        ({"fsdp_modules": ["Block"]}, r"'fsdp_modules' is used only with reduce_type 'fsdp'"),
        ({"reduce_type": "fsdp", "fsdp_forward_methods": [1]}, r"'fsdp_forward_methods' must be a list of method n"),
        ({"reduce_type": "grad_explicit", "cpu_offload": True}, r"'cpu_offload' is used only with reduce_type 'fsdp'"),
        ({"reduce_type": "fsdp", "options": {}}, r"'options' is used only with reduce_type 'grad'"),
    ],
)
def test_bad_fsdp_options_are_one_line_config_errors(value, match):
    with pytest.raises(ConfigError, match=match) as info:
        DistributedOptions.from_config(Config({"torch_distributed": value}))
    assert "\n" not in str(info.value)


def test_fsdp_modules_and_methods_that_the_model_lacks_are_named():
    with pytest.raises(ConfigError, match=r"names \['TransformerBlock'\], .* classes are: \['Block', 'Linear', 'Mo"):
        FsdpStep(BlockModel(), fsdp_modules=["TransformerBlock", "Block"])
    with pytest.raises(ConfigError, match=r"'fsdp_forward_methods' names \['encode'\], which BlockModel does not"):
        FsdpStep(BlockModel(), fsdp_forward_methods=["logits", "encode"])


def _error_of(func: Any) -> str | None:
    try:
        func()
    except Exception as exc:  # each process's error goes back to the test
        return f"{type(exc).__name__}: {exc}"
    return None


def test_a_process_without_any_batch_to_repeat_is_an_error_not_a_hang(make_config):
    # one training sequence: rank 1 has no batch of its own to run rank 0's forward with; it stops with the reason,
    # and rank 0 then with gloo's "connection closed" (as under torchrun, which stops the others)
    config = make_config(
        run_dir="fsdp", get_model=get_model, train_step=train_step, train=_dataset(1), dev=None,
        torch_distributed={**FSDP, "timeout_sec": 30},
    )  # fmt: skip
    errors = run_in_processes(lambda: _error_of(Engine(config).train), options=None)
    assert errors[0] is not None
    assert errors[1].startswith("TrainingError: torch_distributed reduce_type 'fsdp': process 1 got no batch of data")


def test_gradient_noise_with_fsdp_is_a_config_error(make_config):
    with pytest.raises(AssertionError, match=r"ConfigError: .*'fsdp' does not support 'gradient_noise' or 'ema_decay'"):
        _train(
            make_config, "fsdp", processes=2, train=_dataset(4), dev=None, torch_distributed=FSDP, gradient_noise=0.1
        )


def test_fsdp_resumes_from_a_mid_epoch_checkpoint(make_config, tmp_path):
    common = dict(train=_dataset(8), dev=None, max_seqs=1, num_epochs=1, torch_distributed=FSDP)
    straight = _load(_train(make_config, "straight", processes=2, **common), 1)["model"]
    options = dict(get_model=get_model, train_step=train_step, optimizer={"class": "adam"}, learning_rate=0.01)
    stopped = make_config(run_dir="resumed", max_wall_time=1e-6, **options, **common)
    errors = run_in_processes(lambda: _error_of(Engine(stopped).train), options=None)
    expected = "RunInterrupted: max_wall_time=1e-06s reached: stopped in epoch 1 after step 1 "
    assert [error[: len(expected)] for error in errors] == [expected, expected]
    mid_epoch = tmp_path / "resumed/epoch.mid_epoch.pt"
    content = torch.load(mid_epoch, weights_only=True)
    assert content["step"] == 1 and all(type(value) is torch.Tensor for value in content["model"].values())
    shutil.copytree(tmp_path / "resumed", tmp_path / "changed")
    content["model"]["out.bias"] += 1.0  # a run that starts from this file ends elsewhere
    torch.save(content, tmp_path / "changed/epoch.mid_epoch.pt")
    _assert_close(_load(_train(make_config, "resumed", processes=2, **common), 1)["model"], straight)
    changed = _load(_train(make_config, "changed", processes=2, **common), 1)["model"]
    assert not torch.allclose(changed["out.bias"], straight["out.bias"], atol=0.5)
