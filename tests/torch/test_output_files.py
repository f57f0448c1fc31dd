"""Output locations: checked at start-up, stale temporary files removed, a full disk reported, the cleanup that an
interrupted run missed done on restart."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from returnn.__main__ import main
from returnn.errors import ConfigError, TrainingError
from returnn.torch import distributed
from returnn.torch.engine import Engine
from returnn.torch.output_files import remove_stale_temporary_files


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporary_files_are_removed_at_start(make_config, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    dead = _dead_pid()
    stale = [
        models / f"epoch.001.pt.tmp{dead}",
        models / f"epoch.mid_epoch.pt.tmp{dead}",
        tmp_path / f"learning_rates.tmp{dead}",
    ]
    alive = [models / f"epoch.002.pt.tmp{os.getppid()}", models / f"other.pt.tmp{dead}"]  # running, or not ours
    for path in stale + alive:
        path.write_bytes(b"partial")
    Engine(make_config(num_epochs=1)).train()
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in alive)
    (tmp_path / f"learning_rates.tmp{dead}").write_text("partial")
    assert remove_stale_temporary_files({"learning_rate_file": str(tmp_path / "learning_rates")}) == [
        str(tmp_path / f"learning_rates.tmp{dead}")
    ]


def test_cleanup_task_removes_stale_temporary_files(make_config, tmp_path):
    Engine(make_config(num_epochs=1)).train()
    stale = tmp_path / "models" / f"epoch.001.opt.pt.tmp{_dead_pid()}"
    stale.write_bytes(b"partial")
    Engine(make_config(num_epochs=1)).cleanup_old_models()
    assert not stale.exists()


class _StopInLastEvaluation(Engine):
    def evaluate_dataset(self, name, data_loader):
        if self.epoch == 3:
            raise KeyboardInterrupt("killed while evaluating")
        return super().evaluate_dataset(name, data_loader)


def test_restart_after_stop_in_last_evaluation_runs_the_missed_cleanup(make_config, tmp_path):
    cleanup = {"keep_last_n": 1, "keep_best_n": 0}
    with pytest.raises(KeyboardInterrupt):
        _StopInLastEvaluation(make_config(num_epochs=3, cleanup_old_models=cleanup)).train()
    assert "epoch.002.pt" in os.listdir(tmp_path / "models")
    Engine(make_config(num_epochs=3, cleanup_old_models=cleanup)).train()
    assert sorted(os.listdir(tmp_path / "models")) == ["epoch.003.opt.pt", "epoch.003.pt"]
    (tmp_path / "models" / "epoch.002.pt").write_bytes(b"")  # stopped after the evaluation, before the cleanup
    Engine(make_config(num_epochs=3, cleanup_old_models=cleanup)).train()
    assert sorted(os.listdir(tmp_path / "models")) == ["epoch.003.opt.pt", "epoch.003.pt"]


def test_output_location_that_cannot_be_created(make_config, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(
        ConfigError, match=r"config key 'model': cannot write to '.*file/models' \(for '.*'\): '.*file' is a file"
    ):
        Engine(make_config(model=str(tmp_path / "file" / "models" / "epoch"))).train()
    with pytest.raises(ConfigError, match=r"config key 'learning_rate_file': cannot write to '.*file'"):
        Engine(make_config(learning_rate_file=str(tmp_path / "file" / "learning_rates"))).train()


def test_output_location_error_exits_2_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    config = tmp_path / "exp.config"
    config.write_text(
        f"model = {str(tmp_path / 'file' / 'epoch')!r}\ntrain = {{'class': 'DummyDataset'}}\n"
        "def get_model(**kwargs): pass\ndef train_step(**kwargs): pass\n"
    )
    assert main([str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("returnn: error: config key 'model': cannot write to")


def test_full_disk_during_a_write(tmp_path):
    target = tmp_path / "epoch.001.pt"
    os.symlink("/dev/full", f"{target}.tmp{os.getpid()}")  # the kernel answers every write with ENOSPC
    with pytest.raises(TrainingError) as error:
        distributed.write_file_atomic(target, lambda f: f.write(b"x" * 100000), binary=True)
    assert str(error.value) == (
        f"cannot write {str(target)!r}: No space left on device; make room (or make it writable) and start the same "
        "command again: it resumes from the last complete checkpoint, nothing written before is lost"
    )
    assert os.listdir(tmp_path) == []
