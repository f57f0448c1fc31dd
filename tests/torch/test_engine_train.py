"""End to end, in-process: train -> resume -> forward -> eval -> cleanup, on tiny generated data."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from returnn.errors import CheckpointError, TrainingError
from returnn.learning_rate_control import load_learning_rate_file
from returnn.log import log
from returnn.torch.engine import Engine


def _load(path: str) -> dict:
    return torch.load(path, weights_only=True)


def test_train_writes_checkpoints_and_learning_rates_file(make_config, tmp_path):
    Engine(make_config(num_epochs=3)).train()
    models = tmp_path / "models"
    # optimizer files of the last two epochs only
    assert sorted(os.listdir(models)) == [
        "epoch.001.pt",
        "epoch.002.opt.pt",
        "epoch.002.pt",
        "epoch.003.opt.pt",
        "epoch.003.pt",
    ]
    checkpoint = _load(str(models / "epoch.003.pt"))
    # 12 sequences of 6 frames, batch_size 20 frames: 4 batches of 3 sequences per epoch
    assert (checkpoint["epoch"], checkpoint["step"]) == (3, 12)
    assert checkpoint["model"].keys() == {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}
    assert checkpoint["effective_learning_rate"] == 0.01
    assert isinstance(checkpoint["rng"]["torch"], torch.Tensor)
    optimizer = _load(str(models / "epoch.003.opt.pt"))
    assert (optimizer["epoch"], optimizer["step"], optimizer["optimizer_class_name"]) == (3, 12, "Adam")
    assert optimizer["param_names"] == ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
    epochs = load_learning_rate_file(str(tmp_path / "learning_rates"))
    assert list(epochs) == [1, 2, 3]
    for data in epochs.values():
        assert data.learning_rate == 0.01
        assert sorted(data.error) == ["dev_loss_ce", "train_loss_ce"]
        assert all(isinstance(value, float) and 0 < value < 5 for value in data.error.values())
    # as pipelines read it: EpochData as dict, and as a function of (learningRate, error)
    text = (tmp_path / "learning_rates").read_text()
    as_dict = eval(text, {"EpochData": dict, "nan": float("nan"), "inf": float("inf")})
    assert as_dict[3] == {"learningRate": 0.01, "error": epochs[3].error}

    def EpochData(learningRate, error):  # the names that the file uses
        return learningRate, error

    as_calls = eval(text, {"EpochData": EpochData, "nan": float("nan"), "inf": float("inf")})
    assert as_calls == {epoch: (0.01, data.error) for epoch, data in epochs.items()}


def test_resume_equals_uninterrupted_bit_for_bit(make_config, tmp_path, assert_same_state):
    def config(name: str, num_epochs: int):
        return make_config(run_dir=name, num_epochs=num_epochs)

    Engine(config("full", 3)).train()
    Engine(config("resumed", 1)).train()
    Engine(config("resumed", 3)).train()  # the same config, restarted: continues after epoch 1
    for epoch in (2, 3):
        full = _load(str(tmp_path / "full" / f"epoch.00{epoch}.pt"))
        resumed = _load(str(tmp_path / "resumed" / f"epoch.00{epoch}.pt"))
        assert_same_state(full, resumed)
        full_opt = _load(str(tmp_path / "full" / f"epoch.00{epoch}.opt.pt"))
        resumed_opt = _load(str(tmp_path / "resumed" / f"epoch.00{epoch}.opt.pt"))
        assert_same_state(full_opt["optimizer"], resumed_opt["optimizer"])
    full_text = (tmp_path / "full" / "learning_rates").read_text()
    assert (tmp_path / "resumed" / "learning_rates").read_text() == full_text


def test_resume_with_gradient_accumulation_across_epochs_equals_uninterrupted(make_config, tmp_path, assert_same_state):
    def config(name: str, num_epochs: int):
        # 4 steps per epoch: gradients are pending at the end of epoch 1
        return make_config(run_dir=name, num_epochs=num_epochs, accum_grad_multiple_step=3)

    Engine(config("full", 2)).train()
    Engine(config("resumed", 1)).train()
    assert _load(str(tmp_path / "resumed" / "epoch.001.opt.pt"))["pending_grads"].keys() == {
        "hidden.weight",
        "hidden.bias",
        "out.weight",
        "out.bias",
    }
    Engine(config("resumed", 2)).train()
    assert_same_state(_load(str(tmp_path / "full" / "epoch.002.pt")), _load(str(tmp_path / "resumed" / "epoch.002.pt")))


class _CrashInEval(Engine):
    def evaluate_dataset(self, name, data_loader):
        if self.epoch == 2:
            raise KeyboardInterrupt("killed while evaluating")
        return super().evaluate_dataset(name, data_loader)


def test_resume_after_crash_in_evaluation_evaluates_the_missing_dataset(make_config, tmp_path, assert_same_state):
    def config(name: str):
        return make_config(
            run_dir=name, num_epochs=3, dev={**make_config().typed_value("dev"), "seq_ordering": "random"}
        )

    Engine(config("full")).train()
    with pytest.raises(KeyboardInterrupt):
        _CrashInEval(config("crashed")).train()
    assert os.path.exists(tmp_path / "crashed" / "epoch.002.pt")
    assert "dev_loss_ce" not in load_learning_rate_file(str(tmp_path / "crashed" / "learning_rates"))[2].error
    Engine(config("crashed")).train()
    assert (tmp_path / "crashed" / "learning_rates").read_text() == (tmp_path / "full" / "learning_rates").read_text()
    assert_same_state(_load(str(tmp_path / "full" / "epoch.003.pt")), _load(str(tmp_path / "crashed" / "epoch.003.pt")))


def test_finished_training_restarted_does_nothing(make_config, tmp_path, caplog):
    Engine(make_config()).train()
    before = (tmp_path / "learning_rates").read_text()
    with caplog.at_level(logging.INFO, logger="returnn"):
        Engine(make_config()).train()
    assert "train: nothing to do, epochs 1..2 are done (num_epochs=2)" in caplog.text
    assert (tmp_path / "learning_rates").read_text() == before


def test_save_interval_and_model_prefix_without_directory(make_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Engine(make_config(model="net", learning_rate_file="lr", num_epochs=5, save_interval=2)).train()
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith("net")) == [
        "net.002.pt",
        "net.004.opt.pt",
        "net.004.pt",
        "net.005.opt.pt",
        "net.005.pt",
    ]


def test_start_epoch_and_load_epoch(make_config, tmp_path, assert_same_state):
    Engine(make_config(num_epochs=3)).train()
    epoch3 = _load(str(tmp_path / "models" / "epoch.003.pt"))
    for option in ({"start_epoch": 3}, {"load_epoch": 2}):
        os.remove(tmp_path / "models" / "epoch.003.pt")
        Engine(make_config(num_epochs=3, **option)).train()  # continue after epoch 2 again
        assert_same_state(epoch3, _load(str(tmp_path / "models" / "epoch.003.pt")))


def test_missing_optimizer_file(make_config, tmp_path, caplog):
    Engine(make_config(num_epochs=3)).train()
    with pytest.raises(CheckpointError, match=r"epoch.001.opt.pt' is missing; .* allow_missing_optimizer_checkpoint"):
        Engine(make_config(num_epochs=3, start_epoch=2)).train()
    Engine(make_config(num_epochs=2, start_epoch=2, allow_missing_optimizer_checkpoint=True)).train()
    assert "epoch.001.opt.pt' is missing: continuing with a fresh optimizer state" in caplog.text
    assert _load(str(tmp_path / "models" / "epoch.002.pt"))["step"] == 8


def test_load_continues_after_its_epoch_with_its_step(make_config, tmp_path):
    Engine(make_config(model=str(tmp_path / "a" / "epoch"), learning_rate_file=None)).train()
    load = str(tmp_path / "a" / "epoch.002.pt")
    Engine(make_config(model=str(tmp_path / "b" / "epoch"), load=load, num_epochs=3, learning_rate_file=None)).train()
    assert sorted(os.listdir(tmp_path / "b")) == ["epoch.003.opt.pt", "epoch.003.pt"]
    checkpoint = _load(str(tmp_path / "b" / "epoch.003.pt"))
    assert (checkpoint["epoch"], checkpoint["step"]) == (3, 12)


def test_import_model_train_epoch1(make_config, tmp_path, assert_same_state):
    Engine(make_config(model=str(tmp_path / "a" / "epoch"), num_epochs=1, learning_rate_file=None)).train()
    source = str(tmp_path / "a" / "epoch.001")  # without .pt, as pipelines may write it
    # learning rate 0: the new training keeps the imported parameters as they are
    config = make_config(model=str(tmp_path / "b" / "epoch"), import_model_train_epoch1=source, learning_rate=0.0)
    Engine(config).train()
    after = _load(str(tmp_path / "b" / "epoch.002.pt"))
    assert (after["epoch"], after["step"]) == (2, 8)  # a new training: epoch 1 from step 0
    assert_same_state(after["model"], _load(source + ".pt")["model"])


def test_initialize_model_then_train_starts_from_it(make_config, tmp_path, assert_same_state):
    Engine(make_config()).initialize_model()
    initial = _load(str(tmp_path / "models" / "epoch.000.pt"))
    assert (initial["epoch"], initial["step"]) == (0, 0)
    assert os.listdir(tmp_path / "models") == ["epoch.000.pt"]
    Engine(make_config(num_epochs=1)).train()
    fresh_dir = tmp_path / "fresh"
    Engine(make_config(model=str(fresh_dir / "epoch"), learning_rate_file=None, num_epochs=1)).train()
    # the initialized model is the fresh model of epoch 1, so both trainings are the same
    assert_same_state(
        _load(str(tmp_path / "models" / "epoch.001.pt"))["model"], _load(str(fresh_dir / "epoch.001.pt"))["model"]
    )


def test_initialize_model_with_import_model_train_epoch1(make_config, tmp_path, assert_same_state):
    Engine(make_config(model=str(tmp_path / "a" / "epoch"), num_epochs=1, learning_rate_file=None)).train()
    source = str(tmp_path / "a" / "epoch.001.pt")
    Engine(make_config(import_model_train_epoch1=source)).initialize_model()
    initial = _load(str(tmp_path / "models" / "epoch.000.pt"))
    assert (initial["epoch"], initial["step"]) == (0, 0)
    assert_same_state(initial["model"], _load(source)["model"])


def test_forward_gets_checkpoint_epoch_and_step(make_config, tmp_path):
    Engine(make_config()).train()
    results = {}

    def forward_init_hook(run_ctx, **kwargs):
        run_ctx.outputs = {}
        results["init"] = (run_ctx.stage, run_ctx.epoch, run_ctx.global_step)

    def forward_step(*, model, data, run_ctx, **kwargs):
        assert not torch.is_grad_enabled() and not model.training
        logits = model(data["data"].float())
        for i, tag in enumerate(data["seq_tag"]):
            run_ctx.outputs[tag] = logits[i, : data["data:size1"][i]].argmax(-1).tolist()

    def forward_finish_hook(run_ctx, **kwargs):
        results["outputs"] = run_ctx.outputs

    config = make_config(
        task="forward",
        load=str(tmp_path / "models" / "epoch.001.pt"),
        forward=make_config().typed_value("dev"),
        forward_step=forward_step,
        forward_init_hook=forward_init_hook,
        forward_finish_hook=forward_finish_hook,
    )
    Engine(config).forward()
    assert results["init"] == ("forward_step", 1, 4)
    assert sorted(results["outputs"]) == ["seq-0", "seq-1", "seq-2", "seq-3"]
    assert all(len(labels) == 5 for labels in results["outputs"].values())


def test_eval_task_scores_checkpoint_into_learning_rates_file(make_config, tmp_path):
    Engine(make_config()).train()
    before = load_learning_rate_file(str(tmp_path / "learning_rates"))
    devtrain = {**make_config().typed_value("train"), "seq_ordering": "default"}
    config = make_config(task="eval", load_epoch=1, eval_datasets={"devtrain": devtrain})
    Engine(config).eval()
    after = load_learning_rate_file(str(tmp_path / "learning_rates"))
    assert after[2] == before[2]
    assert sorted(after[1].error) == ["dev_loss_ce", "devtrain_loss_ce", "train_loss_ce"]
    assert after[1].error["dev_loss_ce"] == before[1].error["dev_loss_ce"]  # evaluation is deterministic


def test_cleanup_old_models_during_training(make_config, tmp_path):
    cleanup = {"keep": [2], "keep_last_n": 1, "keep_best_n": 1}
    Engine(make_config(num_epochs=5, cleanup_old_models=cleanup)).train()
    scores = {epoch: data.error for epoch, data in load_learning_rate_file(str(tmp_path / "learning_rates")).items()}
    best = {min(scores, key=lambda epoch: scores[epoch][key]) for key in ("train_loss_ce", "dev_loss_ce")}
    kept = {2, 5} | best
    expected = (
        {f"epoch.{epoch:03d}.pt" for epoch in kept}
        | {"epoch.005.opt.pt"}
        | ({"epoch.004.opt.pt"} & {f"epoch.{epoch:03d}.opt.pt" for epoch in kept})
    )
    assert set(os.listdir(tmp_path / "models")) == expected


def test_cleanup_old_models_task(make_config, tmp_path):
    Engine(make_config(num_epochs=4)).train()
    assert len(os.listdir(tmp_path / "models")) == 6
    Engine(make_config(num_epochs=4, cleanup_old_models={"keep_last_n": 1, "keep_best_n": 0})).cleanup_old_models()
    assert sorted(os.listdir(tmp_path / "models")) == ["epoch.004.opt.pt", "epoch.004.pt"]


def test_without_dev_and_with_eval_datasets(make_config, tmp_path):
    extra = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 2, "seq_len": 3}
    Engine(make_config(dev={}, eval_datasets={"extra": extra}, num_epochs=1)).train()  # dev = {}: no dev
    assert sorted(load_learning_rate_file(str(tmp_path / "learning_rates"))[1].error) == [
        "extra_loss_ce",
        "train_loss_ce",
    ]


def test_nonfinite_loss_stops_training_and_saves_nothing(make_config, tmp_path):
    def train_step(*, model, data, run_ctx, **kwargs):
        loss = model(data["data"].float()).sum()
        if run_ctx.epoch == 2 and run_ctx.global_step == 6:
            loss = loss * float("nan")
        run_ctx.mark_as_loss(loss, "sum")

    with pytest.raises(TrainingError, match=r"epoch=2 step=6: loss 'sum' is nan .* nothing of this epoch was saved"):
        Engine(make_config(train_step=train_step, num_epochs=3)).train()
    assert sorted(os.listdir(tmp_path / "models")) == ["epoch.001.opt.pt", "epoch.001.pt"]
    assert list(load_learning_rate_file(str(tmp_path / "learning_rates"))) == [1]


def test_nonfinite_loss_allowed_when_configured(make_config, tmp_path):
    def train_step(*, model, data, run_ctx, **kwargs):
        loss = model(data["data"].float()).sum()
        run_ctx.mark_as_loss(loss, "sum", inv_norm_factor=0)  # 0 frames: the step's loss is nan

    Engine(make_config(train_step=train_step, num_epochs=1, stop_on_nonfinite_train_score=False, dev=None)).train()
    text = (tmp_path / "learning_rates").read_text()
    assert "error={'train_loss_sum': float('nan')}" in text


def test_log_lines(make_config, capsys):
    config = make_config(num_epochs=1, log_verbosity=5)
    log.init_by_config(config)
    Engine(config).train()
    out = capsys.readouterr().out
    step_lines = [line for line in out.splitlines() if line.startswith("epoch=1 step=")]
    assert len(step_lines) == 4
    assert step_lines[0].startswith("epoch=1 step=1 global_step=1 loss_ce=")
    assert " seqs=3 step_time=" in step_lines[0] and " eta=" in step_lines[0]
    assert "epoch=1 dataset=dev dev_loss_ce=" in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch=1 train_loss_ce=")]
    assert len(epoch_lines) == 1
    assert " dev_loss_ce=" in epoch_lines[0] and " lr=0.01 time=" in epoch_lines[0]


def test_forward_applies_amp(make_config, tmp_path):
    Engine(make_config(num_epochs=1)).train()
    dtypes = set()

    def forward_step(*, model, data, run_ctx, **kwargs):
        dtypes.add(model(data["data"].float()).dtype)

    config = make_config(torch_amp="bfloat16", forward=make_config().typed_value("dev"), forward_step=forward_step)
    Engine(config).forward()
    assert dtypes == {torch.bfloat16}


def test_global_window_reaches_the_hdf_datasets(make_config, tmp_path):
    import numpy as np

    from returnn.datasets.hdf import SimpleHDFWriter

    path = str(tmp_path / "w.hdf")
    with SimpleHDFWriter(path, dim=5, extra_type={"classes": (3, 1, "int32")}) as writer:
        for i in range(4):
            features = np.random.default_rng(i).normal(size=(1, 6, 5)).astype("float32")
            writer.insert_batch(features, [6], [f"s{i}"], extra={"classes": np.zeros((1, 6), "int32")})
    seen_dims = []

    def get_model(*, epoch, step, **kwargs):
        return torch.nn.Linear(15, 3)  # 5 features x window 3

    def train_step(*, model, data, run_ctx, **kwargs):
        seen_dims.append(data["data"].shape[-1])
        logits = model(data["data"])
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data["classes"].flatten().long(), reduction="sum")
        run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=logits.shape[0] * logits.shape[1])

    hdf = {"class": "HDFDataset", "files": [path]}
    config = make_config(get_model=get_model, train_step=train_step, train=hdf, dev=hdf, window=3, num_epochs=1)
    Engine(config).train()
    assert seen_dims and set(seen_dims) == {15}
