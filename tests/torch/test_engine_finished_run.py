"""Starting a finished training again: nothing is built, nothing changes (pipelines re-run finished jobs)."""

from __future__ import annotations

import os

from returnn.torch.engine import Engine

from .conftest import get_model


def test_finished_run_builds_neither_model_nor_datasets(make_config, tmp_path):
    Engine(make_config()).train()
    files = {name: os.path.getmtime(tmp_path / "models" / name) for name in os.listdir(tmp_path / "models")}
    lr_file = (tmp_path / "learning_rates").read_text()

    calls = []

    def counting_get_model(**kwargs):
        calls.append(kwargs)
        return get_model(**kwargs)

    engine = Engine(make_config(get_model=counting_get_model, train={"class": "NoSuchDataset"}))
    engine.train()
    assert calls == [] and engine.data_loaders == {}
    assert {name: os.path.getmtime(tmp_path / "models" / name) for name in os.listdir(tmp_path / "models")} == files
    assert (tmp_path / "learning_rates").read_text() == lr_file


def test_finished_run_with_missing_evaluation_still_evaluates(make_config, tmp_path):
    Engine(make_config()).train()
    lr_file = tmp_path / "learning_rates"
    text = lr_file.read_text()
    epoch2 = [line for line in text.splitlines() if line.strip().startswith("2:")][0]
    without_dev = (
        epoch2.split("error={")[0]
        + "error={"
        + ", ".join(
            part for part in epoch2.split("error={")[1].rstrip("}),").split(", ") if not part.startswith("'dev_")
        )
        + "}),"
    )
    assert "'dev_" not in without_dev and "'train_loss_" in without_dev
    lr_file.write_text(text.replace(epoch2, without_dev))
    Engine(make_config()).train()
    assert "dev_loss_" in [line for line in lr_file.read_text().splitlines() if line.strip().startswith("2:")][0]
