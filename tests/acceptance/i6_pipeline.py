"""The trainer seen from a Sisyphus / i6_core pipeline: how its jobs write configs, run ``rnn.py`` and the tools, and
read the results back. Written from the documented behaviour of the jobs (ReturnnTrainingJob, ReturnnForwardJobV2,
GetBestPtCheckpointJob, AverageTorchCheckpointsJob, ReturnnDumpHDFJob, ExtractDatasetMeanStddevJob), so that the
acceptance tests drive the trainer exactly the way those pipelines do.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pprint
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PYTHON = sys.executable

MODEL_MODULE = "frame_net"
MODEL_CONFIG = {"in_dim": 5, "hidden_dim": 16, "num_classes": 3}
LABELS = ["a", "b", "c"]
NUM_EPOCHS = 6
KEEP_EPOCHS = [3]  # ReturnnTrainingJob's keep_epochs
LEARNING_RATES = [0.005, 0.02, 0.02, 0.01, 0.01, 0.005]


# ================================================================ configs, as i6_core's ReturnnConfig writes them


def serialize_config(
    config: dict[str, Any],
    post_config: dict[str, Any] | None = None,
    *,
    prolog: str = "",
    epilog: str = "",
    unreadable: Sequence[str] = (),
) -> str:
    """The text of a ``returnn.config``: ``#!rnn.py``, the prolog, one ``key = pformat(value)`` line per key
    (sorted, config and post_config merged), values that pprint cannot write back (in real pipelines: values holding
    ``tk.Path`` objects; here the keys in ``unreadable``) packed into ``config = json.loads("...")``, otherwise
    ``config = {}``, then ``locals().update(**config)`` and the epilog."""
    merged = {**config, **(post_config or {})}
    lines = []
    packed = {}
    for key in sorted(merged):
        if key in unreadable:
            packed[key] = merged[key]
        else:
            lines.append(f"{key} = {pprint.pformat(merged[key], width=150)}")
    if packed:
        lines.append("import json")
        escaped = json.dumps(packed).replace('"', '\\"')
        lines.append(f'config = json.loads("{escaped}")')
    else:
        lines.append("config = {}")
    body = "\n".join(lines)
    return f"#!rnn.py\n\n{prolog}\n\n{body}\n\nlocals().update(**config)\n\n{epilog}\n"


def model_epilog(*, forward: str | None = None, hook_config: dict[str, Any] | None = None) -> str:
    """The epilog of i6_experiments' serializer: the config's directory on ``sys.path``, ``get_model`` as a partial of
    the model class, the step functions imported from the model module; for forwarding, ``forward_step`` and the hooks
    (the init hook a partial with its ``config`` dict) imported under the names the trainer looks for."""
    lines = [
        "import os",
        "import sys",
        "sys.path.insert(0, os.path.dirname(__file__))",
        f'get_model = __import__("functools").partial(__import__("{MODEL_MODULE}", fromlist=["Model"]).Model, '
        f'**{{"model_config_dict": {MODEL_CONFIG!r}}})',
        f"from {MODEL_MODULE} import train_step",
    ]
    if forward is not None:
        lines += [
            f"from {MODEL_MODULE} import {forward}_step as forward_step",
            f'forward_init_hook = __import__("functools").partial(__import__("{MODEL_MODULE}", '
            f'fromlist=["{forward}_init_hook"]).{forward}_init_hook, **{{"config": {hook_config or {}!r}}})',
            f"from {MODEL_MODULE} import {forward}_finish_hook as forward_finish_hook",
        ]
    return "\n".join(lines)


LR_PROLOG = '''\
def dynamic_learning_rate(*, global_train_step, learning_rate, **kwargs):
    """Warm-up over the first steps; the step count comes from the global config, as real prologs read it."""
    from returnn.config import get_global_config

    warmup = get_global_config().int("_warmup_steps", 1)
    return learning_rate * min(1.0, (global_train_step + 1) / warmup)'''


# ================================================================ Sisyphus job directories


@dataclasses.dataclass(frozen=True)
class JobDir:
    """A Sisyphus job directory: ``work/`` is the working directory, ``output/`` holds the config and results."""

    path: Path

    @property
    def work(self) -> Path:
        return self.path / "work"

    @property
    def output(self) -> Path:
        return self.path / "output"

    @property
    def config(self) -> Path:
        return self.output / "returnn.config"

    @property
    def models(self) -> Path:
        return self.output / "models"

    @property
    def learning_rates(self) -> Path:
        return self.work / "learning_rates"

    @classmethod
    def create(cls, path: Path) -> JobDir:
        job = cls(path)
        job.work.mkdir(parents=True)
        job.output.mkdir()
        return job


def create_executable(path: Path, command: Sequence[str]) -> None:
    """``rnn.sh`` as i6_core writes it: the command line joined by spaces."""
    path.write_text("#!/usr/bin/env bash\n" + " ".join(command))
    path.chmod(0o755)


def rnn_command(config: Path) -> list[str]:
    return [PYTHON, str(REPO_ROOT / "rnn.py"), str(config)]


def tool_command(tool: str, *args: str) -> list[str]:
    return [PYTHON, str(REPO_ROOT / "tools" / tool), *args]


def _job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # jobs set the thread counts to their CPU requirement; one thread each, as the tests share a small machine
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(extra or {})}


def run(command: Sequence[str], cwd: Path, *, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a job's command as the job does."""
    return subprocess.run(
        list(command), cwd=cwd, env=_job_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"{' '.join(map(str, proc.args))} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def run_until_file_then_kill(command: Sequence[str], cwd: Path, marker: Path, *, env: dict[str, str]) -> str:
    """Start ``command``, wait until ``marker`` appears, then SIGKILL its whole process group (as a cluster ends a
    job that ran out of time). Returns what it printed."""
    log_path = cwd / "killed-run.out"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            list(command), cwd=cwd, env=_job_env(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 180
            while not marker.exists():
                if proc.poll() is not None:
                    raise AssertionError(f"ended ({proc.returncode}) before {marker.name}:\n{log_path.read_text()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{marker.name} did not appear:\n{log_path.read_text()}")
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    text = log_path.read_text()
    log_path.unlink()
    return text


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``directory`` with its size and modification time (to check that nothing changed)."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def copy_job(job: JobDir, path: Path) -> JobDir:
    """A copy of a job directory whose config and ``rnn.sh`` name the copy's own files."""
    shutil.copytree(job.path, path)
    copy = JobDir(path)
    for name in (copy.config, copy.work / "rnn.sh"):
        name.write_text(name.read_text().replace(str(job.path), str(path)))
    return copy


# ================================================================ data, as i6_core jobs write HDF files


def write_corpus(directory: Path, name: str, *, num_seqs: int, seed: int) -> tuple[Path, Path]:
    """A features HDF (``data``: 5-dim float32 frames) and an alignment HDF (``data``: one class per frame, int32),
    written with ``SimpleHDFWriter`` the way i6_core's HDF jobs write them. Each frame's class is readable from its
    features, through noise. Returns (features file, alignment file)."""
    from returnn.datasets.hdf import SimpleHDFWriter

    rng = np.random.default_rng(seed)
    features_path, alignment_path = directory / f"{name}.features.hdf", directory / f"{name}.alignment.hdf"
    features = SimpleHDFWriter(str(features_path), dim=MODEL_CONFIG["in_dim"], ndim=2)
    alignment = SimpleHDFWriter(str(alignment_path), dim=MODEL_CONFIG["num_classes"], ndim=1)
    for i in range(num_seqs):
        length = int(rng.integers(4, 13))
        classes = rng.integers(0, MODEL_CONFIG["num_classes"], size=length).astype(np.int32)
        frames = rng.normal(size=(length, MODEL_CONFIG["in_dim"])).astype(np.float32)
        frames[np.arange(length), classes] += 2.0
        tag = f"{name}/recording{i}/{i}"
        features.insert_batch(inputs=frames[None], seq_len=[length], seq_tag=[tag])
        alignment.insert_batch(inputs=classes[None], seq_len=[length], seq_tag=[tag])
    features.close()
    alignment.close()
    return features_path, alignment_path


def meta_dataset(features: Path, alignment: Path, **control_options: Any) -> dict[str, Any]:
    """A MetaDataset joining the features and the alignment by tag; the features dataset orders the epochs."""
    return {
        "class": "MetaDataset",
        "datasets": {
            "features": {"class": "HDFDataset", "files": [str(features)], "use_cache_manager": True, **control_options},
            "alignment": {"class": "HDFDataset", "files": [str(alignment)], "use_cache_manager": True},
        },
        "data_map": {"data": ("features", "data"), "classes": ("alignment", "data")},
        "seq_order_control_dataset": "features",
    }


# ================================================================ reading results back, as i6_core does


def read_learning_rates_as_dicts(path: Path) -> dict[int, dict[str, Any]]:
    """``eval`` with ``EpochData`` = ``dict`` (ReturnnTrainingJob.info in older i6_core): keyword form only."""
    return eval(path.read_text().strip(), {"EpochData": dict, "nan": float("nan"), "inf": float("inf"), "np": np})


@dataclasses.dataclass
class _EpochData:
    learningRate: float
    error: dict[str, float]


def completed_epochs(path: Path) -> list[int]:
    """ReturnnTrainingJob.info / completed_fraction: ``eval`` with EpochData a dataclass; an epoch is finished when
    its error dict is non-empty (Sisyphus resets the resubmit counter when this grows)."""
    epochs = eval(path.read_text().strip(), {"EpochData": _EpochData, "nan": float("nan"), "inf": float("inf")})
    assert isinstance(epochs, dict)
    return sorted(epoch for epoch, data in epochs.items() if len(data.error) > 0)


def best_epoch(path: Path, key: str, index: int = 0) -> int:
    """GetBestEpochJob / GetBestPtCheckpointJob: ``eval`` with EpochData a function; the key must be in the last
    epoch; lower is better; ``index`` picks the n-th best."""

    def EpochData(learningRate, error):
        return {"learning_rate": learningRate, "error": error}

    data = eval(path.read_text(), {"EpochData": EpochData, "nan": float("nan"), "inf": float("inf"), "np": np})
    epochs = sorted(data)
    if key not in data[epochs[-1]]["error"]:
        raise KeyError(f"{key} is not available in the last epoch of {path}")
    scores = [(epoch, data[epoch]["error"][key]) for epoch in epochs if key in data[epoch]["error"]]
    return sorted(scores, key=lambda item: item[1])[index][0]


def get_best_pt_checkpoint(training: JobDir, key: str, index: int, job: JobDir) -> Path:
    """GetBestPtCheckpointJob: the ``index``-th best epoch by ``key``, hard-linked as ``output/checkpoint.pt``."""
    epoch = best_epoch(training.learning_rates, key, index)
    checkpoint = job.output / "checkpoint.pt"
    os.link(training.models / f"epoch.{epoch:03d}.pt", checkpoint)
    return checkpoint


def forward_job(base: Path, name: str, checkpoint: Path, config: dict[str, Any], epilog: str) -> tuple[JobDir, Path]:
    """ReturnnForwardJobV2: the config (``task``, ``load``, and post_config's log settings added) in ``output/``,
    run from a fresh temporary directory. Returns the job and that directory (whose files the job copies back)."""
    job = JobDir.create(base / f"ReturnnForwardJobV2.{name}")
    shutil.copy(FIXTURES / f"{MODEL_MODULE}.py", job.output)
    full_config = {"task": "forward", "load": str(checkpoint), **config}
    post_config = {"device": "cpu", "log": ["./returnn.log"], "tf_log_dir": "returnn-tf-log", "log_verbosity": 5}
    job.config.write_text(serialize_config(full_config, post_config, epilog=epilog))
    run_dir = base / f"tmp-{name}"  # the job's tempfile.TemporaryDirectory
    run_dir.mkdir()
    return job, run_dir


def reference_model(checkpoint: str | Path) -> Any:
    """The model code's ``Model`` with a checkpoint's parameters, built in this process (to check what the jobs
    wrote against what the checkpoint computes)."""
    import torch

    spec = importlib.util.spec_from_file_location("frame_net_reference", FIXTURES / f"{MODEL_MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Model(model_config_dict=MODEL_CONFIG)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return model.eval()
