"""Every updater option, on a tiny linear model with hand-checkable gradients."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from returnn.config import Config
from returnn.errors import CheckpointError, ConfigError, StepFunctionError, TrainingError
from returnn.torch.updater import Updater, create_optimizer, optimizer_classes


def _model() -> torch.nn.Linear:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    return model


def _updater(model: torch.nn.Module, **items) -> Updater:
    config = Config({"optimizer": {"class": "sgd"}, "learning_rate": 0.1, **items})
    return Updater.from_config(config, model, device="cpu", amp_dtype=None)


def _run_step(updater: Updater, model: torch.nn.Module, global_step: int, x: list[float], factor: float = 1.0):
    """Loss = factor * (w . x): the gradient is factor * x."""
    loss = model(torch.tensor([x])).sum() * factor
    updater.backward(loss)
    return updater.step(global_step, fetch=loss.detach().reshape(1))


def test_optimizer_by_name_any_case_or_class_and_dict_untouched():
    options = {"class": "AdamW", "epsilon": 1e-6, "weight_decay": 0.5, "betas": (0.8, 0.9)}
    original = copy.deepcopy(options)
    params = list(_model().parameters())
    optimizer = create_optimizer(params, options, 0.01)
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert (group["lr"], group["eps"], group["weight_decay"], group["betas"]) == (0.01, 1e-6, 0.5, (0.8, 0.9))
    assert options == original  # the config's dict is left as it is, so a second updater works too
    assert type(create_optimizer(params, options, 0.01)) is torch.optim.AdamW
    assert type(create_optimizer(params, {"class": torch.optim.RMSprop}, 0.01)) is torch.optim.RMSprop
    assert create_optimizer(params, {"class": "adam", "decoupled_weight_decay": True}, 0.1).defaults[
        "decoupled_weight_decay"
    ]
    assert {"sgd", "adam", "adamw", "rmsprop", "adagrad"} <= set(optimizer_classes())


@pytest.mark.parametrize(
    "options, match",
    [
        ({"class": "adamm"}, r"unknown class 'adamm'; give a torch.optim.Optimizer subclass or one of: "),
        ({"class": dict}, r"unknown class <class 'dict'>"),
        ({"lr": 0.1}, r"expected a dict with 'class'"),
        ({"class": "sgd", "momentun": 0.9}, r"SGD has no option\(s\) 'momentun'; its options are: momentum, dampening"),
        ({"class": "adam", "epsilon": 1e-8, "eps": 1e-8}, r"both 'epsilon' and 'eps' are given"),
        ({"class": "adam", "learning_rate": 0.1}, r"set the learning rate with the config key 'learning_rate'"),
        ({"class": "sgd", "momentum": -1.0}, r"cannot create SGD: Invalid momentum value: -1.0"),
    ],
)
def test_bad_optimizer_options(options, match):
    with pytest.raises(ConfigError, match=match):
        create_optimizer(list(_model().parameters()), options, 0.1)


def test_missing_optimizer():
    with pytest.raises(ConfigError, match=r"config key 'optimizer' is not set; .* optimizer = \{'class': 'adam'\}"):
        Updater.from_config(Config(), _model(), device="cpu", amp_dtype=None)


def test_plain_step_and_fetch():
    model = _model()
    updater = _updater(model)
    assert _run_step(updater, model, 0, [1.0, 2.0]) == [-1.0]  # 1*1 - 1*2
    assert model.weight.tolist() == [[pytest.approx(0.9), pytest.approx(-1.2)]]
    assert model.weight.grad is None  # zeroed (set to None) after the update


def test_gradient_clip_by_value():
    model = _model()
    _run_step(_updater(model, gradient_clip=0.5), model, 0, [1.0, -3.0])
    assert model.weight.tolist() == [[pytest.approx(0.95), pytest.approx(-0.95)]]


def test_gradient_clip_zero_means_off():
    model = _model()
    _run_step(_updater(model, gradient_clip=0), model, 0, [1.0, 2.0])
    assert model.weight.tolist() == [[pytest.approx(0.9), pytest.approx(-1.2)]]


@pytest.mark.parametrize("key", ["gradient_clip_norm", "gradient_clip_global_norm"])
def test_gradient_clip_global_norm(key):
    model = _model()
    _run_step(_updater(model, **{key: 1.0}), model, 0, [3.0, 4.0])  # norm 5 -> scaled to 1
    assert model.weight.tolist() == [[pytest.approx(1.0 - 0.06), pytest.approx(-1.0 - 0.08)]]


def test_both_clip_norm_keys_conflict():
    with pytest.raises(ConfigError, match=r"'gradient_clip_norm' and 'gradient_clip_global_norm' are both set"):
        _updater(_model(), gradient_clip_norm=1.0, gradient_clip_global_norm=2.0)


def test_nonfinite_gradient_norm_skips_updates_then_stops(caplog):
    model = _model()
    updater = _updater(model, gradient_clip_norm=1.0, gradient_clip_norm_invalid_gradient_threshold=2)
    _run_step(updater, model, 0, [float("inf"), 1.0])
    assert model.weight.tolist() == [[1.0, -1.0]] and model.weight.grad is None
    assert "global_step=0 non-finite gradient norm, update skipped (1 in a row, stop at 2)" in caplog.text
    _run_step(updater, model, 1, [1.0, 0.0])  # a valid step resets the count
    assert updater.num_consecutive_invalid == 0
    _run_step(updater, model, 2, [float("nan"), 1.0])
    with pytest.raises(TrainingError, match=r"non-finite \(nan/inf\) in 2 steps in a row \(up to global step 3\)"):
        _run_step(updater, model, 3, [float("nan"), 1.0])


def test_gradient_noise():
    model = _model()
    updater = _updater(model, gradient_noise=0.3)
    torch.manual_seed(0)
    _run_step(updater, model, 0, [0.0, 0.0])  # zero gradient: only the noise moves the weight
    torch.manual_seed(0)
    noise = torch.randn(1, 2) * 0.3
    assert torch.allclose(model.weight, torch.tensor([[1.0, -1.0]]) - 0.1 * noise)
    assert not torch.equal(model.weight, torch.tensor([[1.0, -1.0]]))


def test_accumulation_counts_global_steps_and_sums():
    model = _model()
    updater = _updater(model, accum_grad_multiple_step=3)
    assert [updater.is_update_step(step) for step in range(6)] == [False, False, True, False, False, True]
    assert _run_step(updater, model, 0, [1.0, 0.0]) == [1.0]  # losses are reported as they are
    _run_step(updater, model, 1, [1.0, 0.0])
    assert model.weight.tolist() == [[1.0, -1.0]]
    _run_step(updater, model, 2, [0.0, 1.0])
    # summed gradient (2, 1), not averaged
    assert model.weight.tolist() == [[pytest.approx(0.8), pytest.approx(-1.1)]]


def test_pending_accumulated_gradients_travel_with_the_state():
    model = _model()
    updater = _updater(model, accum_grad_multiple_step=2)
    _run_step(updater, model, 0, [1.0, 2.0])
    state = updater.state_dict()
    assert state["pending_grads"]["weight"].tolist() == [[1.0, 2.0]]
    other_model = _model()
    other = _updater(other_model, accum_grad_multiple_step=2)
    other.load_state_dict(state, source="x.opt.pt")
    _run_step(other, other_model, 1, [1.0, 0.0])
    assert other_model.weight.tolist() == [[pytest.approx(0.8), pytest.approx(-1.2)]]


def test_learning_rate_per_epoch_and_dynamic():
    calls = []

    def dynamic_learning_rate(*, global_train_step, epoch, learning_rate, **kwargs):
        calls.append((global_train_step, epoch, learning_rate))
        return learning_rate * 10

    model = _model()
    updater = _updater(model, dynamic_learning_rate=dynamic_learning_rate)
    updater.set_epoch_learning_rate(3, 0.01)
    assert updater.learning_rate == 0.01
    _run_step(updater, model, 7, [1.0, 0.0])
    assert calls == [(7, 3, 0.01)]
    assert updater.learning_rate == pytest.approx(0.1)
    assert model.weight.tolist() == [[pytest.approx(0.9), -1.0]]


def test_dynamic_learning_rate_must_take_kwargs():
    with pytest.raises(StepFunctionError, match=r"'dynamic_learning_rate' must accept \*\*kwargs"):
        _updater(_model(), dynamic_learning_rate=lambda global_train_step, epoch, learning_rate: 0.1)


@pytest.mark.parametrize("value", [0, "x"])
def test_bad_accumulation(value):
    with pytest.raises(ConfigError, match=r"'accum_grad_multiple_step': expected an int"):
        _updater(_model(), accum_grad_multiple_step=value)


def test_state_round_trip_and_other_parameters():
    model = _model()
    updater = Updater.from_config(
        Config({"optimizer": {"class": "adam"}, "learning_rate": 0.1}), model, device="cpu", amp_dtype=None
    )
    _run_step(updater, model, 0, [1.0, 2.0])
    state = updater.state_dict()
    assert (state["optimizer_class_name"], state["param_names"], state["pending_grads"]) == ("Adam", ["weight"], None)
    fresh = Updater.from_config(
        Config({"optimizer": {"class": "adam"}, "learning_rate": 0.1}), _model(), device="cpu", amp_dtype=None
    )
    fresh.load_state_dict(state, source="a.opt.pt")
    assert fresh.optimizer.state_dict()["state"][0]["step"] == 1
    fresh.load_state_dict(state["optimizer"], source="old.opt.pt")  # a bare optimizer state dict, as older files
    bigger = torch.nn.Linear(2, 2)
    other = Updater.from_config(
        Config({"optimizer": {"class": "adam"}, "learning_rate": 0.1}), bigger, device="cpu", amp_dtype=None
    )
    with pytest.raises(CheckpointError, match=r"a.opt.pt: the optimizer state is for other parameters"):
        other.load_state_dict(state, source="a.opt.pt")
    with pytest.raises(CheckpointError, match=r"old.opt.pt: cannot load the optimizer state \(.*\); .* delete it"):
        other.load_state_dict(state["optimizer"], source="old.opt.pt")  # no parameter names to compare


def test_state_of_another_optimizer_class():
    model = _model()
    adam = Updater.from_config(
        Config({"optimizer": {"class": "adam"}, "learning_rate": 0.1}), model, device="cpu", amp_dtype=None
    )
    _run_step(adam, model, 0, [1.0, 2.0])
    sgd = _updater(model, optimizer={"class": "sgd", "momentum": 0.9})
    with pytest.raises(
        CheckpointError,
        match=r"a.opt.pt: the optimizer state is of Adam, but the config's optimizer is SGD; set the optimizer class "
        r"back to 'Adam', or delete that file and set allow_missing_optimizer_checkpoint = True",
    ):
        sgd.load_state_dict(adam.state_dict(), source="a.opt.pt")


def test_bfloat16_amp_on_cpu_trains(make_config, tmp_path):
    from returnn.torch.engine import Engine

    seen = []

    def train_step(*, model, data, run_ctx, **kwargs):
        logits = model(data["data"].float())
        seen.append(logits.dtype)
        run_ctx.mark_as_loss(logits.float().square().sum(), "sq")

    engine = Engine(make_config(train_step=train_step, torch_amp="bfloat16", num_epochs=1, dev=None))
    engine.train()
    assert set(seen) == {torch.bfloat16}
    assert engine.updater.grad_scaler is None  # only float16 needs a scaler
    assert torch.load(tmp_path / "models" / "epoch.001.opt.pt", weights_only=True)["grad_scaler"] is None


def test_float16_amp_scaler_state_is_saved_and_resumed(make_config, tmp_path, assert_same_state):
    from returnn.torch.engine import Engine

    def config(name: str, num_epochs: int):
        return make_config(run_dir=name, num_epochs=num_epochs, torch_amp={"dtype": "float16"}, dev=None)

    Engine(config("full", 2)).train()
    Engine(config("resumed", 1)).train()
    scaler = torch.load(tmp_path / "resumed" / "epoch.001.opt.pt", weights_only=True)["grad_scaler"]
    # 4 updates without overflow so far: the resumed run must continue counting from there (the full run's 8)
    assert (scaler["scale"], scaler["_growth_tracker"]) == (65536.0, 4)
    Engine(config("resumed", 2)).train()
    for name in ("epoch.002.pt", "epoch.002.opt.pt"):
        full = torch.load(tmp_path / "full" / name, weights_only=True)
        assert_same_state(full, torch.load(tmp_path / "resumed" / name, weights_only=True))


def test_float16_amp_options_make_a_grad_scaler(caplog):
    caplog.set_level(logging.WARNING)
    model = _model()
    updater = Updater(model, optimizer_options={"class": "sgd"}, learning_rate=0.1, amp_dtype=torch.float16)
    assert updater.grad_scaler is not None
    _run_step(updater, model, 0, [1.0, 2.0])
    assert model.weight.tolist() == [[pytest.approx(0.9), pytest.approx(-1.2)]]  # unscaled before the update
    assert set(updater.state_dict()["grad_scaler"]) >= {"scale", "growth_factor"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_amp_on_cuda_trains(make_config, tmp_path):
    from returnn.torch.engine import Engine

    def train_step(*, model, data, run_ctx, **kwargs):
        logits = model(data["data"].float())
        assert logits.dtype == torch.float16 and logits.device.type == "cuda"
        run_ctx.mark_as_loss(logits.float().square().sum(), "sq")

    config = make_config(train_step=train_step, torch_amp_options={"dtype": "float16"}, device="cuda", num_epochs=1)
    engine = Engine(config)
    engine.train()
    state = torch.load(tmp_path / "models" / "epoch.001.opt.pt", weights_only=True)
    assert state["grad_scaler"]["scale"] > 0
    assert next(engine.model.parameters()).device.type == "cuda"


def test_learning_rate_schedule_sets_each_steps_rate_on_the_epochs_rate(make_config, tmp_path):
    from returnn.learning_rate_control import load_learning_rate_file
    from returnn.torch.engine import Engine

    from .conftest import train_step

    seen = []

    def recording_step(*, run_ctx, **kwargs):
        seen.append(run_ctx.engine.updater.learning_rate)  # as the previous step set it
        train_step(run_ctx=run_ctx, **kwargs)

    schedule = {"class": "cosine", "warmup_steps": 2, "total_steps": 8, "final_scale": 0.1}
    Engine(make_config(learning_rate_schedule=schedule, train_step=recording_step, dev=None)).train()
    # seen in step s: the factor of step s - 1; in the first step of an epoch: the epoch's rate
    assert seen[:4] == pytest.approx([0.01, 0.005, 0.01, 0.01])
    assert seen[4:8] == pytest.approx(
        [0.01] + [0.01 * (0.1 + 0.9 * (1 + math.cos(math.pi * p)) / 2) for p in (2 / 6, 3 / 6, 4 / 6)]
    )
    assert {data.learning_rate for data in load_learning_rate_file(str(tmp_path / "learning_rates")).values()} == {0.01}


def test_learning_rate_schedule_and_dynamic_learning_rate_exclude_each_other(make_config):
    config = make_config(learning_rate_schedule="constant", dynamic_learning_rate=lambda **kwargs: 0.1)
    with pytest.raises(ConfigError, match=r"'learning_rate_schedule' and 'dynamic_learning_rate' are both set"):
        Updater.from_config(config, torch.nn.Linear(2, 2), device="cpu", amp_dtype=None)


def test_dynamic_learning_rate_gets_the_continuous_epoch(make_config):
    from returnn.torch.engine import Engine

    seen = []

    def dynamic_learning_rate(*, global_train_step, epoch, epoch_continuous, learning_rate, **kwargs):
        seen.append((global_train_step, epoch, epoch_continuous))
        return learning_rate

    Engine(make_config(dynamic_learning_rate=dynamic_learning_rate, dev=None)).train()
    # 12 sequences per epoch, 3 per step: the share of the epoch done before each step
    assert seen == [(s, 1 + s // 4, 0.25 * s) for s in range(8)]
