"""RunCtx, get_run_ctx, the loss bookkeeping, device and AMP options."""

from __future__ import annotations

import math

import pytest
import torch

from returnn.config import Config
from returnn.errors import ConfigError, StepFunctionError
from returnn.torch.context import RunCtx, get_run_ctx, set_run_ctx
from returnn.torch.device import amp_dtype_from_config, autocast, resolve_device
from returnn.torch.engine import Engine
from returnn.torch.scores import LossTotals, loss_values


def _ctx(stage: str = "train_step") -> RunCtx:
    return RunCtx(stage=stage, device="cpu", engine=None, epoch=3, global_step=17)


def test_properties_and_user_attributes():
    run_ctx = _ctx()
    assert (run_ctx.stage, run_ctx.device, run_ctx.epoch, run_ctx.global_step, run_ctx.engine) == (
        "train_step",
        "cpu",
        3,
        17,
        None,
    )
    run_ctx.decoder_outputs = [1]
    run_ctx.mark_as_loss(torch.tensor(2.0), "ce")
    run_ctx.init_step(18)
    assert (run_ctx.global_step, run_ctx.losses, run_ctx.decoder_outputs) == (18, {}, [1])


def test_one_process_is_rank_0_of_1_and_gathers_its_own_value():
    run_ctx = _ctx("forward_step")
    value = (torch.ones(2), 5)
    assert (run_ctx.rank, run_ctx.world_size) == (0, 1)
    assert run_ctx.all_gather(value) == [value]


def test_total_loss_applies_scale_and_normalization():
    run_ctx = _ctx()
    run_ctx.mark_as_loss(torch.tensor(6.0), "ce", inv_norm_factor=torch.tensor(3))
    run_ctx.mark_as_loss(torch.tensor(4.0), "aux", scale=0.5, inv_norm_factor=2)
    run_ctx.mark_as_loss(torch.tensor(100.0), "report_only", scale=0.0)
    assert run_ctx.total_loss().item() == pytest.approx(2.0 + 1.0)
    values = loss_values(run_ctx.losses)
    assert values.tolist() == [6.0, 3.0, 4.0, 2.0, 100.0, 1.0]  # unscaled, inv_norm 1 where not given
    totals = LossTotals()
    assert totals.add(run_ctx.losses, values.tolist()) == {"ce": 2.0, "aux": 2.0, "report_only": 100.0}
    totals.add(run_ctx.losses, [2.0, 1.0, 0.0, 2.0, 0.0, 1.0])
    # epoch score: sum of losses / sum of inv_norm_factors, not a mean of the step means
    assert totals.scores("dev") == {"dev_loss_ce": 2.0, "dev_loss_aux": 1.0, "dev_loss_report_only": 50.0}
    assert math.isnan(LossTotals().add(run_ctx.losses, [1.0, 0.0, 1.0, 1.0, 1.0, 1.0])["ce"])


def test_mark_as_loss_errors():
    with pytest.raises(StepFunctionError, match=r"mark_as_loss\('ce'\) called in stage 'forward_step'"):
        _ctx("forward_step").mark_as_loss(torch.tensor(1.0), "ce")
    with pytest.raises(StepFunctionError, match=r"expected a torch.Tensor, got float"):
        _ctx().mark_as_loss(1.0, "ce")
    with pytest.raises(StepFunctionError, match=r"inv_norm_factor must be a scalar, got shape \[2\]"):
        _ctx().mark_as_loss(torch.tensor(1.0), "ce", inv_norm_factor=torch.ones(2))


def test_get_run_ctx_during_get_model_and_steps(make_config):
    seen = []

    def get_model(*, epoch, step, **kwargs):
        run_ctx = get_run_ctx()
        seen.append((run_ctx.stage, run_ctx.epoch))
        model = torch.nn.Linear(5, 3)
        model.register_forward_hook(lambda *args: seen.append((get_run_ctx().stage, get_run_ctx().epoch)))
        return model

    Engine(make_config(get_model=get_model, num_epochs=1)).train()
    assert seen[0] == ("load", 1)
    assert set(seen[1:]) == {("train_step", 1)}
    with pytest.raises(StepFunctionError, match=r"get_run_ctx\(\) was called while no train"):
        get_run_ctx()
    set_run_ctx(_ctx())
    assert get_run_ctx().global_step == 17


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("CPU") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match=r"unknown device 'cuda:x'"):
        resolve_device("cuda:x")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resolve_cuda_device():
    assert resolve_device("gpu") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match=r"only \d+ GPU\(s\) are visible"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(
    "items, expected",
    [
        ({}, None),
        ({"torch_amp": "bfloat16"}, torch.bfloat16),
        ({"torch_amp": {"dtype": "float16"}}, torch.float16),
        ({"torch_amp_options": {"dtype": "bfloat16"}}, torch.bfloat16),
        ({"torch_amp": torch.float16}, torch.float16),
    ],
)
def test_amp_dtype(items, expected):
    assert amp_dtype_from_config(Config(items)) == expected


@pytest.mark.parametrize(
    "items, match",
    [
        ({"torch_amp": "bf16", "torch_amp_options": {"dtype": "bfloat16"}}, r"are both set; keep one"),
        ({"torch_amp_options": {"dtype": "float16", "grad_scaler": None}}, r"expected \{'dtype': 'float16'"),
        ({"torch_amp_options": {"dtype": "float32"}}, r"unknown AMP dtype 'float32'"),
    ],
)
def test_bad_amp_options(items, match):
    with pytest.raises(ConfigError, match=match):
        amp_dtype_from_config(Config(items))


def test_autocast_on_cpu():
    with autocast("cpu", torch.bfloat16):
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("cpu", None):
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loss_values_gather_losses_from_several_devices():
    run_ctx = RunCtx(stage="train_step", device="cuda", engine=None, epoch=1, global_step=0)
    run_ctx.mark_as_loss(torch.tensor(6.0, device="cuda"), "ce", inv_norm_factor=torch.tensor(3, device="cuda"))
    run_ctx.mark_as_loss(torch.tensor(2.0), "errors", scale=0.0, inv_norm_factor=torch.tensor(4))  # on the CPU
    values = loss_values(run_ctx.losses)
    assert values.device.type == "cuda"
    assert values.tolist() == [6.0, 3.0, 2.0, 4.0]
    assert run_ctx.total_loss().item() == 2.0
