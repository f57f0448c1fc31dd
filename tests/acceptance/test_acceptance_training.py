"""Acceptance: a ReturnnTrainingJob as Sisyphus runs it, killed in epoch 2 and run again, then read back the way
i6_core reads it (progress, best epochs, kept checkpoints) and averaged with tools/torch_avg_checkpoints.py.

The job (conftest.py ``trained_job``): a config serialized as i6_core writes it (json-packed dataset dicts, a prolog
with ``dynamic_learning_rate``, an epilog importing the model code next to the config), MetaDatasets over HDF files,
``eval_datasets = {"devtrain": ...}``, six epochs of 6 steps each.
"""

from __future__ import annotations

import os
import re

import i6_pipeline as i6
import pytest
import torch

STEPS_PER_EPOCH = 6  # 48 sequences, 8 per batch
SCORE_KEYS = {
    f"{dataset}_loss_{loss}" for dataset in ("train", "dev", "devtrain") for loss in ("ce", "fer")
}  # fmt: skip
PARAMETERS = {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}


def _log(trained_job) -> str:
    return (trained_job.job.work / "returnn.log").read_text()


@pytest.mark.slow
def test_killed_in_epoch_2_then_the_same_command_continues_after_epoch_1(trained_job):
    models = "output/models/"
    assert sorted(name for name in trained_job.files_when_killed if name.startswith(models)) == [
        models + "epoch.001.opt.pt",
        models + "epoch.001.pt",
    ]
    assert trained_job.completed_when_killed == [1]  # what Sisyphus shows as "ep 1/6"
    starts = re.findall(r"^train: epochs=.*$", _log(trained_job), flags=re.MULTILINE)
    assert starts == [
        "train: epochs=1..6 start=fresh global_step=0 device=cpu processes=1",
        f"train: epochs=2..6 start=resume global_step={STEPS_PER_EPOCH} device=cpu processes=1",
    ]
    # each epoch finished exactly once: the partial epoch 2 of the killed run left no trace
    finished = re.findall(r"^epoch=(\d+) train_loss_ce=", _log(trained_job), flags=re.MULTILINE)
    assert finished == ["1", "2", "3", "4", "5", "6"]
    # everything went to ./returnn.log
    assert trained_job.killed_output == "" and trained_job.resumed.stdout == "" and trained_job.resumed.stderr == ""
    assert sorted(str(p.relative_to(trained_job.job.path)) for p in trained_job.job.path.rglob("*.tmp*")) == []


@pytest.mark.slow
def test_learning_rates_file_read_by_i6_core(trained_job, tmp_path):
    path = trained_job.job.learning_rates
    # ReturnnTrainingJob.run hard-links it into output/ after the run
    os.link(path, tmp_path / "learning_rates")
    assert i6.completed_epochs(tmp_path / "learning_rates") == [1, 2, 3, 4, 5, 6]
    as_dicts = i6.read_learning_rates_as_dicts(path)
    assert sorted(as_dicts) == [1, 2, 3, 4, 5, 6]
    for epoch, data in as_dicts.items():
        assert data["learningRate"] == i6.LEARNING_RATES[epoch - 1]
        assert set(data["error"]) == SCORE_KEYS
        assert all(type(value) is float and 0 <= value < 2 for value in data["error"].values())
    first, last = as_dicts[1]["error"], as_dicts[6]["error"]
    # it learned: frame error well below chance (2/3), losses down
    assert last["dev_loss_fer"] < 0.3 and last["dev_loss_ce"] < first["dev_loss_ce"]
    assert last["devtrain_loss_ce"] < first["devtrain_loss_ce"]


def _expected_kept_epochs(scores: dict[int, dict[str, float]]) -> set[int]:
    """cleanup_old_models = {"keep": [3], "keep_last_n": 1, "keep_best_n": 2}, per score key."""
    kept = set(i6.KEEP_EPOCHS) | {max(scores)}
    for key in SCORE_KEYS:
        values = sorted((scores[epoch][key], epoch) for epoch in scores)
        if len({value for value, _ in values}) > 1:
            kept.update(epoch for _, epoch in values[:2])
    return kept


@pytest.mark.slow
def test_checkpoints_kept_and_loadable_as_weights_only(trained_job):
    scores = {
        epoch: data["error"] for epoch, data in i6.read_learning_rates_as_dicts(trained_job.job.learning_rates).items()
    }
    kept = _expected_kept_epochs(scores)
    assert kept < set(range(1, i6.NUM_EPOCHS + 1)), "cleanup had nothing to delete; the test would show nothing"
    names = sorted(os.listdir(trained_job.job.models))
    assert [name for name in names if not name.endswith(".opt.pt")] == [
        f"epoch.{epoch:03d}.pt" for epoch in sorted(kept)
    ]
    # optimizer files only for (kept) recent epochs: the last one at least, which the next resume needs
    assert "epoch.006.opt.pt" in names
    assert {name for name in names if name.endswith(".opt.pt")} <= {"epoch.005.opt.pt", "epoch.006.opt.pt"}
    # ReturnnTrainingJob.out_checkpoints: the keep_epochs, and the last epoch
    for epoch in [*i6.KEEP_EPOCHS, i6.NUM_EPOCHS]:
        checkpoint = torch.load(trained_job.job.models / f"epoch.{epoch:03d}.pt", weights_only=True)
        assert (checkpoint["epoch"], checkpoint["step"]) == (epoch, epoch * STEPS_PER_EPOCH)
        # the prolog's dynamic_learning_rate: its warm-up is over after 4 steps
        assert checkpoint["effective_learning_rate"] == i6.LEARNING_RATES[epoch - 1]
        assert set(checkpoint["model"]) == PARAMETERS
    optimizer = torch.load(trained_job.job.models / "epoch.006.opt.pt", weights_only=True)
    assert (optimizer["epoch"], optimizer["step"]) == (6, 6 * STEPS_PER_EPOCH)


@pytest.mark.slow
def test_rerun_of_a_finished_job_changes_nothing(trained_job, tmp_path):
    job = i6.copy_job(trained_job.job, tmp_path / "ReturnnTrainingJob.abc")
    before = i6.snapshot(job.output)
    lr_text = job.learning_rates.read_text()
    proc = i6.run(["./rnn.sh"], job.work)
    assert proc.returncode == 0, i6.describe(proc)
    assert i6.snapshot(job.output) == before
    assert job.learning_rates.read_text() == lr_text
    assert "train: nothing to do, epochs 1..6 are done (num_epochs=6)" in (job.work / "returnn.log").read_text()


@pytest.mark.slow
def test_best_two_by_dev_loss_averaged(trained_job, tmp_path):
    key = "dev_loss_ce"
    scores = {
        epoch: data["error"][key]
        for epoch, data in i6.read_learning_rates_as_dicts(trained_job.job.learning_rates).items()
    }
    best = []
    for index in (0, 1):  # get_best_averaged_checkpoint=(2, "dev_loss_ce"): one GetBestPtCheckpointJob per rank
        job = i6.JobDir.create(tmp_path / f"GetBestPtCheckpointJob.{index}")
        best.append(i6.get_best_pt_checkpoint(trained_job.job, key, index, job))
    by_score = sorted(scores, key=scores.get)
    loaded = [torch.load(path, weights_only=True) for path in best]
    assert [checkpoint["epoch"] for checkpoint in loaded] == by_score[:2]

    average = i6.JobDir.create(tmp_path / "AverageTorchCheckpointsJob")
    out = average.output / "model" / "average.pt"
    command = i6.tool_command("torch_avg_checkpoints.py", "--checkpoints", *map(str, best), "--output_path", str(out))
    proc = i6.run(command, average.work)
    assert proc.returncode == 0, i6.describe(proc)
    averaged = torch.load(out, weights_only=True)
    assert averaged["epoch"] == max(by_score[:2]) and sorted(averaged["merged_epochs"]) == sorted(by_score[:2])
    for name in PARAMETERS:
        expected = (loaded[0]["model"][name].double() + loaded[1]["model"][name].double()) / 2
        assert torch.allclose(averaged["model"][name].double(), expected, rtol=0, atol=1e-7), name
    assert [p.name for p in out.parent.iterdir()] == ["average.pt"]
