"""Fixtures of the acceptance tests: a corpus of HDF files and a training job that was killed and resumed.

The training job runs once per test session (it takes a few seconds); tests that only read its outputs share it,
tests that change files work on a copy (``i6_pipeline.copy_job``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the tests import i6_pipeline from here

import i6_pipeline as i6


@dataclasses.dataclass(frozen=True)
class Corpus:
    train_features: Path
    train_alignment: Path
    dev_features: Path
    dev_alignment: Path


@dataclasses.dataclass(frozen=True)
class TrainedJob:
    """A ReturnnTrainingJob directory after: run, SIGKILL in epoch 2, the same command again (to the end)."""

    job: i6.JobDir
    corpus: Corpus
    killed_output: str  # what the killed run printed
    files_when_killed: dict[str, tuple[int, int]]  # job dir snapshot right after the kill
    completed_when_killed: list[int]  # finished epochs by i6_core's reading of the learning_rates file then
    resumed: subprocess.CompletedProcess  # the second run


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    directory = tmp_path_factory.mktemp("corpus")
    train = i6.write_corpus(directory, "train", num_seqs=48, seed=1)
    dev = i6.write_corpus(directory, "dev", num_seqs=16, seed=2)
    return Corpus(*train, *dev)


def training_config(job: i6.JobDir, corpus: Corpus) -> str:
    """ReturnnTrainingJob.create_returnn_config: the user's config, the keys the job injects, and post_config."""
    user_config = {
        "backend": "torch",
        "batch_size": 100,
        "max_seqs": 8,
        "num_workers_per_gpu": 0,  # the forward jobs run a worker; here each would cost seconds of start-up
        "optimizer": {"class": "adam", "epsilon": 1e-8},
        "learning_rates": i6.LEARNING_RATES,
        "_warmup_steps": 4,
        "gradient_clip_norm": 1.0,
        "stop_on_nonfinite_train_score": True,
        "train": i6.meta_dataset(corpus.train_features, corpus.train_alignment, seq_ordering="laplace:.4"),
        "dev": i6.meta_dataset(corpus.dev_features, corpus.dev_alignment, seq_ordering="sorted_reverse"),
        "eval_datasets": {
            "devtrain": i6.meta_dataset(
                corpus.train_features, corpus.train_alignment, seq_ordering="sorted_reverse", fixed_random_subset=16
            )
        },
    }
    config = {"task": "train", "target": "classes", "learning_rate_file": "learning_rates", "use_horovod": False}
    config.update(user_config)
    post_config = {
        "device": "cpu",
        "log": ["./returnn.log"],
        "log_verbosity": 5,
        "num_epochs": i6.NUM_EPOCHS,
        "save_interval": 1,
        "model": str(job.models / "epoch"),
        "cleanup_old_models": {"keep_last_n": 1, "keep_best_n": 2, "keep": i6.KEEP_EPOCHS},
    }
    return i6.serialize_config(
        config,
        post_config,
        prolog=i6.LR_PROLOG,
        epilog=i6.model_epilog(),
        unreadable=("train", "dev", "eval_datasets"),  # dataset dicts holding tk.Path objects go through json
    )


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory, corpus) -> TrainedJob:
    job = i6.JobDir.create(tmp_path_factory.mktemp("jobs") / "ReturnnTrainingJob.abc")
    shutil.copy(i6.FIXTURES / f"{i6.MODEL_MODULE}.py", job.output)
    job.config.write_text(training_config(job, corpus))
    i6.create_executable(job.work / "rnn.sh", i6.rnn_command(job.config))
    killed_output = i6.run_until_file_then_kill(
        ["./rnn.sh"], job.work, job.work / "holding-epoch-2", env={"FRAME_NET_HOLD_IN_EPOCH": "2"}
    )
    files_when_killed = i6.snapshot(job.path)
    completed_when_killed = i6.completed_epochs(job.learning_rates)
    resumed = i6.run(["./rnn.sh"], job.work)
    assert resumed.returncode == 0, i6.describe(resumed)
    return TrainedJob(job, corpus, killed_output, files_when_killed, completed_when_killed, resumed)
