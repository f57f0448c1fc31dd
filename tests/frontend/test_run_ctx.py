"""returnn.frontend.get_run_ctx(): mainline's mark_as_loss / mark_as_output on this trainer's run context."""

from __future__ import annotations

import pytest
import torch

import returnn.frontend as rf
from returnn.errors import StepFunctionError
from returnn.frontend.run_ctx import RunCtx, using_frontend_run_ctx
from returnn.tensor import Dim, Tensor, batch_dim
from returnn.torch import context


def train_ctx() -> tuple[context.RunCtx, RunCtx]:
    run_ctx = context.RunCtx(stage="train_step", device="cpu", engine=None, epoch=1, global_step=0)
    return run_ctx, RunCtx("train_step", run_ctx)


def test_per_frame_losses_mainline_normalization():
    run_ctx, ctx = train_ctx()
    with using_frontend_run_ctx(ctx):
        frame_losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        rf.get_run_ctx().mark_as_loss(frame_losses, "ce", scale=0.5)
        rf.get_run_ctx().mark_as_loss(torch.tensor([True, False, False, True]), "fer", as_error=True)
        rf.get_run_ctx().mark_as_loss(frame_losses * 2, "norm", use_normalized_loss=True, custom_inv_norm_factor=4)
    ce, fer, norm = run_ctx.losses["ce"], run_ctx.losses["fer"], run_ctx.losses["norm"]
    assert (ce.loss.item(), ce.inv_norm_factor) == (6.0, 3)  # score 6 / 3
    assert (fer.loss.item(), fer.inv_norm_factor, fer.scale) == (2.0, 4, 0.0)  # reported only
    assert (norm.loss.item(), norm.inv_norm_factor) == (12.0, 4)
    assert run_ctx.total_loss().item() == pytest.approx(6.0 * 0.5 + 12.0 / 4)  # sum * scale + normalized


def test_padded_frames_of_a_tensor_do_not_count():
    run_ctx, ctx = train_ctx()
    time_dim = Dim(Tensor("len", [batch_dim], "int32", raw_tensor=torch.tensor([1, 3])), name="time")
    loss = Tensor("loss", [batch_dim, time_dim], raw_tensor=torch.tensor([[1.0, 100.0, 100.0], [1.0, 2.0, 3.0]]))
    ctx.mark_as_loss(loss, "ce")
    assert (run_ctx.losses["ce"].loss.item(), run_ctx.losses["ce"].inv_norm_factor.item()) == (7.0, 4)


def test_outside_steps_and_wrong_stages():
    assert rf.get_run_ctx().stage == "init"
    with pytest.raises(StepFunctionError, match="losses are marked in train_step"):
        rf.get_run_ctx().mark_as_loss(torch.ones(()), "ce")
    with pytest.raises(StepFunctionError, match="outputs are marked in forward_step"):
        train_ctx()[1].mark_as_default_output(torch.ones(2, 3))


def test_mark_as_output_checks_model_outputs():
    ctx = RunCtx("forward_step", expected_outputs=rf.TensorDict({"output": {"dim": 2}}))
    ctx.mark_as_default_output(torch.zeros(4, 7, 2))
    assert ctx.outputs["output"].dims == ctx.expected_outputs["output"].dims
    with pytest.raises(StepFunctionError, match=r"'scores' is not declared in model_outputs"):
        ctx.mark_as_output(torch.zeros(4), "scores")
    with pytest.raises(StepFunctionError, match="for the 3 dims"):
        RunCtx("forward_step", expected_outputs=rf.TensorDict({"output": {"dim": 2}})).mark_as_default_output(
            torch.zeros(4, 2)
        )


def test_frontend_modules_are_a_clear_error():
    with pytest.raises(
        StepFunctionError, match="returnn.frontend.Linear is not available: this trainer runs pure torch"
    ):
        rf.Linear  # noqa: B018
