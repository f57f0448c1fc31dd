"""Acceptance: mistakes from outside, on copies of the finished training job (with ``num_epochs`` raised from 6 to 8,
as a user continues a training) and on a forward job. Each run must stop with exit code 2 and one line on stderr
that names the problem, and leave the checkpoints and the learning_rates file as they were.
"""

from __future__ import annotations

import os

import i6_pipeline as i6
import pytest


def _assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, i6.describe(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("returnn: error: "), i6.describe(proc)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _typo_in_a_key(job: i6.JobDir) -> tuple[str, ...]:
    text = job.config.read_text()
    job.config.write_text(text.replace("batch_size = 100\n", "batch_size = 100\naccum_grad_multiple_steps = 2\n"))
    return "'accum_grad_multiple_steps'", "did you mean 'accum_grad_multiple_step'"


def _missing_hdf_file(job: i6.JobDir) -> tuple[str, ...]:
    text = job.config.read_text()
    assert text.count("/dev.alignment.hdf") == 1
    job.config.write_text(text.replace("/dev.alignment.hdf", "/dev.alignment.missing.hdf"))
    return ("dev.alignment.missing.hdf",)


def _corrupted_learning_rates_file(job: i6.JobDir) -> tuple[str, ...]:
    text = job.learning_rates.read_text()
    job.learning_rates.write_text(text[: len(text) // 2])  # as a writer that does not write atomically leaves it
    return "learning_rates", "corrupted"


@pytest.mark.slow
@pytest.mark.parametrize("mistake", [_typo_in_a_key, _missing_hdf_file, _corrupted_learning_rates_file])
def test_training_job_stops_with_one_line_and_keeps_its_files(trained_job, tmp_path, mistake):
    job = i6.copy_job(trained_job.job, tmp_path / "ReturnnTrainingJob.abc")
    job.config.write_text(job.config.read_text().replace("num_epochs = 6\n", "num_epochs = 8\n"))
    fragments = mistake(job)
    models, learning_rates = i6.snapshot(job.models), job.learning_rates.read_bytes()
    proc = i6.run(["./rnn.sh"], job.work)
    _assert_one_line_error(proc, *fragments)
    assert i6.snapshot(job.models) == models
    assert job.learning_rates.read_bytes() == learning_rates
    assert sorted(str(p.relative_to(job.path)) for p in job.path.rglob("*.tmp*")) == []
    # the reason is in the job's log as well, where a user looks first
    assert proc.stderr.strip().removeprefix("returnn: error: ") in (job.work / "returnn.log").read_text()


@pytest.mark.slow
def test_forward_job_with_a_load_that_does_not_exist(trained_job, tmp_path):
    missing = trained_job.job.models / "epoch.009.pt"
    config = {"backend": "torch", "forward": {"class": "HDFDataset", "files": [str(trained_job.corpus.dev_features)]}}
    epilog = i6.model_epilog(forward="search", hook_config={"labels": i6.LABELS})
    job, cwd = i6.forward_job(tmp_path, "search", missing, config, epilog)
    proc = i6.run(i6.rnn_command(job.config), cwd)
    _assert_one_line_error(proc, f"{str(missing)!r}", "'load'")
    assert sorted(os.listdir(cwd)) == ["returnn.log"]  # no search_out.py that the pipeline could take for a result
