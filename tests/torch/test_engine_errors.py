"""Bad input: each case stops with an error that says what is wrong and how to fix it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from returnn.errors import CheckpointError, ConfigError, DatasetError, StepFunctionError
from returnn.torch.engine import Engine


def _step(mark):
    def train_step(*, model, data, run_ctx, **kwargs):
        mark(model(data["data"].float()), run_ctx)

    return train_step


@pytest.mark.parametrize(
    "missing, task, match",
    [
        ("get_model", "train", r"task 'train' needs the config function 'get_model': define 'def get_model\(\*, epoch"),
        ("train_step", "train", r"task 'train' needs the config function 'train_step'"),
        ("train_step", "eval", r"task 'eval' needs the config function 'train_step'"),
        ("forward_step", "forward", r"task 'forward' needs the config function 'forward_step': define 'def forward_"),
        ("get_model", "initialize_model", r"task 'initialize_model' needs the config function 'get_model'"),
    ],
)
def test_missing_step_function(make_config, missing, task, match):
    engine = Engine(make_config(**{missing: None}, forward={"class": "DummyDataset"}))
    with pytest.raises(StepFunctionError, match=match):
        getattr(engine, task)()


def test_step_function_without_kwargs_is_found_at_start_up(make_config):
    def train_step(*, model, data, run_ctx):
        pass

    with pytest.raises(StepFunctionError, match=r"'train_step' must accept \*\*kwargs .* 'def train_step\(\*, model, "):
        Engine(make_config(train_step=train_step))

    def forward_init_hook(run_ctx):
        pass

    with pytest.raises(StepFunctionError, match=r"'forward_init_hook' must accept \*\*kwargs"):
        Engine(make_config(forward_init_hook=forward_init_hook))


def test_step_function_not_callable(make_config):
    with pytest.raises(ConfigError, match=r"config key 'train_step': expected a function .*, got str"):
        Engine(make_config(train_step="train_step"))


def test_get_model_not_returning_a_module(make_config):
    with pytest.raises(StepFunctionError, match=r"get_model must return a torch.nn.Module, got dict"):
        Engine(make_config(get_model=lambda **kwargs: {})).train()


def test_train_step_marking_no_loss(make_config):
    with pytest.raises(StepFunctionError, match=r"train_step marked no loss: call run_ctx.mark_as_loss"):
        Engine(make_config(train_step=_step(lambda out, run_ctx: None))).train()


def test_non_scalar_loss(make_config):
    step = _step(lambda out, run_ctx: run_ctx.mark_as_loss(out.sum(dim=(0, 1)), "ce"))
    with pytest.raises(StepFunctionError, match=r"mark_as_loss\('ce'\): the loss must be a scalar, got shape \[3\]"):
        Engine(make_config(train_step=step)).train()


def test_same_loss_name_twice(make_config):
    def mark(out, run_ctx):
        run_ctx.mark_as_loss(out.sum(), "ce")
        run_ctx.mark_as_loss(out.mean(), "ce")

    with pytest.raises(StepFunctionError, match=r"the loss name 'ce' was marked twice in one step"):
        Engine(make_config(train_step=_step(mark))).train()


def test_loss_without_gradient(make_config):
    step = _step(lambda out, run_ctx: run_ctx.mark_as_loss(out.sum().detach(), "ce"))
    with pytest.raises(StepFunctionError, match=r"the total loss of \['ce'\] has no gradient"):
        Engine(make_config(train_step=step)).train()


def test_unknown_optimizer(make_config):
    with pytest.raises(ConfigError, match=r"'optimizer': unknown class 'adamm'; give .* one of: .*adam, adamax, adamw"):
        Engine(make_config(optimizer={"class": "adamm"})).train()


def test_missing_load_file(make_config, tmp_path):
    missing = str(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match=r"config key 'load': checkpoint file not found: '.*nothing.pt' \(also"):
        Engine(make_config(load=missing)).train()
    with pytest.raises(CheckpointError, match=r"config key 'load': checkpoint file not found"):
        Engine(make_config(load=missing, forward={"class": "DummyDataset"})).eval()


def test_checkpoint_of_another_model(make_config, tmp_path):
    other = str(tmp_path / "other.pt")
    torch.save({"model": {"encoder.weight": torch.zeros(2), "hidden.weight": torch.zeros(8, 5)}, "epoch": 3}, other)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint '.*other.pt' does not match the model: missing hidden.bias, out.bias, out.weight; "
        r"it has instead encoder.weight; .* load_ignore_missing_vars",
    ):
        Engine(make_config(load=other)).train()
    # with load_ignore_missing_vars, the parameters the checkpoint has are loaded, the others keep their init
    engine = Engine(make_config(load=other, load_ignore_missing_vars=True, num_epochs=4, learning_rate=0.0))
    engine.train()  # continues after the checkpoint's epoch 3
    assert torch.equal(engine.model.hidden.weight, torch.zeros(8, 5))
    assert sorted(os.listdir(tmp_path / "models")) == ["epoch.004.opt.pt", "epoch.004.pt"]


def test_checkpoint_without_model_or_epoch_entry(make_config, tmp_path):
    path = str(tmp_path / "params.pt")
    torch.save({"params": {}, "epoch": 1}, path)
    with pytest.raises(
        CheckpointError, match=r"params.pt' has no 'model' entry \(it has: params, epoch\); .* 'checkpoint_key'"
    ):
        Engine(make_config(load=path)).train()
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match=r"params.pt' has no valid 'epoch' entry, .* import_model_train_epoch1"):
        Engine(make_config(load=path)).train()


def test_checkpoint_with_other_shapes(make_config, tmp_path):
    Engine(make_config(num_epochs=1)).train()

    def get_model(*, epoch, step, **kwargs):
        model = torch.nn.Module()
        model.hidden = torch.nn.Linear(5, 4)
        model.out = torch.nn.Linear(4, 3)
        return model

    with pytest.raises(
        CheckpointError,
        match=r"epoch.001.pt' does not match the model: shapes differ for hidden.weight \(checkpoint \[8, 5\], model "
        r"\[4, 5\]\), hidden.bias \(checkpoint \[8\], model \[4\]\), out.weight",
    ):
        Engine(make_config(get_model=get_model)).train()


def test_checkpoint_with_arbitrary_objects_is_not_unpickled(make_config, tmp_path):
    path = str(tmp_path / "unsafe.pt")
    torch.save({"model": {}, "epoch": 1, "object": ConfigError("x")}, path)
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors, .* not loaded for safety"):
        Engine(make_config(load=path)).train()


def test_corrupted_learning_rates_file_is_left_as_it_is(make_config, tmp_path):
    path = tmp_path / "learning_rates"
    text = "{1: EpochData(learningRate=0.01, error={'dev_loss_ce': 1.0}),\n 2: EpochData(learningRate=0.0"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=r"learning_rates file '.*learning_rates' is corrupted \(line 2: "):
        Engine(make_config()).train()
    assert path.read_text() == text


def test_eval_dataset_key_is_told_to_use_eval_datasets(make_config):
    with pytest.raises(ConfigError, match=r"config key 'eval': .* write eval_datasets = \{'eval': ...\} instead"):
        Engine(make_config(eval={"class": "DummyDataset"}))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("num_epochs", 0, r"'num_epochs': expected an int >= 1, got 0"),
        ("save_interval", -1, r"'save_interval': expected an int >= 1"),
        ("device", "tpu", r"'device': unknown device 'tpu'; choose one of: cpu, cuda, gpu, cuda:N"),
        ("cleanup_old_models", {"keep_last": 2}, r"unknown option\(s\) 'keep_last'; choose from: keep, keep_last_n"),
        ("torch_amp", "float8", r"'torch_amp': unknown AMP dtype 'float8'; choose one of: float16, bfloat16"),
    ],
)
def test_bad_engine_options(make_config, key, value, match):
    with pytest.raises(ConfigError, match=match):
        Engine(make_config(**{key: value}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(make_config):
    with pytest.raises(ConfigError, match=r"'device': 'gpu' requested, but .*; set device = 'cpu'"):
        Engine(make_config(device="gpu"))


def test_train_needs_model_and_train_dataset(make_config):
    with pytest.raises(ConfigError, match=r"task 'train' needs the config key 'model': the checkpoint prefix"):
        Engine(make_config(model=None)).train()
    with pytest.raises(ConfigError, match=r"task 'train' needs the config key 'train': the training dataset"):
        Engine(make_config(train=None)).train()


def test_forward_and_eval_need_a_checkpoint_and_data(make_config):
    with pytest.raises(ConfigError, match=r"task 'forward' needs the config key 'forward'"):
        Engine(make_config(forward_step=lambda **kwargs: None)).forward()
    with pytest.raises(CheckpointError, match=r"task 'eval' needs a checkpoint: set 'load' .* allow_random_model_init"):
        Engine(make_config()).eval()
    with pytest.raises(ConfigError, match=r"task 'eval' needs datasets to evaluate: set 'dev' and/or 'eval_datasets'"):
        Engine(make_config(dev=None)).eval()


def test_dataset_yielding_no_batches(make_config):
    with pytest.raises(DatasetError, match=r"dataset 'train' yielded no batches in epoch 1; .*max_seq_length"):
        Engine(make_config(max_seq_length=2)).train()


def test_start_epoch_without_checkpoint(make_config, tmp_path):
    with pytest.raises(CheckpointError, match=r"continue after epoch 2 .* no checkpoint '.*epoch.002.pt'"):
        Engine(make_config(start_epoch=3)).train()
    assert not os.path.exists(tmp_path / "models")


def test_several_processes_need_torchrun(make_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 .* MASTER_ADDR and MASTER_PORT are not set; start .*torchrun"):
        Engine(make_config()).train()
    config = make_config(forward=make_config().typed_value("dev"), forward_step=lambda **kwargs: None)
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 .* MASTER_ADDR and MASTER_PORT are not set"):
        Engine(config).forward()


def test_zero_length_sequence_is_named_instead_of_a_nan_loss(make_config):
    rng = np.random.default_rng(0)
    seqs = [
        {"data": rng.normal(size=(length, 5)).astype("float32"), "classes": np.zeros(length, dtype="int32")}
        for length in (4, 0, 3)
    ]
    train = {"class": "StaticDataset", "data": seqs, "output_dim": {"classes": 3}}
    with pytest.raises(DatasetError, match=r"the batch holds sequences of length 0: 'seq-1' \(classes, data\), and "):
        Engine(make_config(train=train, dev=None, max_seqs=1)).train()
