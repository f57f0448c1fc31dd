"""Acceptance: the tools as i6_core's jobs call them, on the corpus and the checkpoints of the training job.

- ReturnnDumpHDFJob: writes ``dataset.config`` (``#!rnn.py`` and ``train = <str of the dataset dict>``), runs
  ``tools/hdf_dump.py dataset.config <tmp.hdf>`` into an existing empty file from ``tempfile.mkstemp``, then moves it.
- ExtractDatasetMeanStddevJob: a serialized ``returnn.config`` with ``train``, ``rnn.sh`` running
  ``tools/dump-dataset.py returnn.config --endseq -1 --type null --stats --dump_stats stats --key data``, then reads
  ``stats.mean.txt`` / ``stats.std_dev.txt`` line by line.
- TorchOnnxExportJob: ``tools/torch_export_to_onnx.py returnn.config <ckpt> <out.onnx> --device cpu --verbosity 5``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import i6_pipeline as i6
import numpy as np
import pytest
import torch

from returnn.datasets import init_dataset


def _read_all(definition: dict) -> dict[str, dict[str, np.ndarray]]:
    """Every sequence of a dataset, ``{tag: {key: data}}``, read in this process."""
    dataset = init_dataset(definition)
    dataset.init_seq_order(epoch=1)
    seqs = {}
    for seq_idx in range(dataset.num_seqs):
        dataset.load_seqs(seq_idx, seq_idx + 1)
        seqs[dataset.get_tag(seq_idx)] = {key: dataset.get_data(seq_idx, key) for key in dataset.get_data_keys()}
    return seqs


@pytest.mark.slow
def test_dump_hdf_job_joins_features_and_alignment_into_one_file(trained_job, tmp_path):
    corpus = trained_job.corpus
    dataset = i6.meta_dataset(corpus.dev_features, corpus.dev_alignment)
    job = i6.JobDir.create(tmp_path / "ReturnnDumpHDFJob")
    (job.work / "dataset.config").write_text(f"#!rnn.py\ntrain = {dataset!s}\n")
    fd, tmp_hdf = tempfile.mkstemp(suffix=".hdf", dir=tmp_path)
    os.close(fd)
    proc = i6.run(i6.tool_command("hdf_dump.py", "dataset.config", tmp_hdf), job.work)
    assert proc.returncode == 0, i6.describe(proc)
    os.chmod(tmp_hdf, 0o644)
    shutil.move(tmp_hdf, job.output / "data.hdf")

    dumped = _read_all({"class": "HDFDataset", "files": [str(job.output / "data.hdf")]})
    source = _read_all(dataset)
    assert list(dumped) == list(source) and len(dumped) == 16
    for tag, data in source.items():
        assert sorted(dumped[tag]) == ["classes", "data"]
        for key in ("data", "classes"):
            assert dumped[tag][key].dtype == data[key].dtype, (tag, key)
            np.testing.assert_array_equal(dumped[tag][key], data[key])
    assert sorted(os.listdir(job.work)) == ["dataset.config"]


@pytest.mark.slow
def test_mean_stddev_job_reads_stats_files(trained_job, tmp_path):
    features = str(trained_job.corpus.train_features)
    job = i6.JobDir.create(tmp_path / "ExtractDatasetMeanStddevJob")
    (job.work / "returnn.config").write_text(
        i6.serialize_config({"train": {"class": "HDFDataset", "files": [features], "use_cache_manager": True}})
    )
    command = i6.tool_command("dump-dataset.py", "returnn.config", "--endseq -1", "--type null", "--stats")
    i6.create_executable(job.work / "rnn.sh", [*command, "--dump_stats stats", "--key data"])
    proc = i6.run(["./rnn.sh"], job.work)
    assert proc.returncode == 0, i6.describe(proc)
    with open(job.work / "stats.mean.txt") as mean_file, open(job.work / "stats.std_dev.txt") as std_dev_file:
        mean = [float(line) for line in mean_file]
        std_dev = [float(line.strip()) for line in std_dev_file]
    frames = np.concatenate([seq["data"] for seq in _read_all({"class": "HDFDataset", "files": [features]}).values()])
    assert frames.shape[1] == len(mean) == len(std_dev) == i6.MODEL_CONFIG["in_dim"]
    np.testing.assert_allclose(mean, frames.astype(np.float64).mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(std_dev, frames.astype(np.float64).std(axis=0), rtol=1e-9, atol=0)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs the optional package onnx")
def test_onnx_export_job(trained_job, tmp_path):
    import onnx

    job = i6.JobDir.create(tmp_path / "TorchOnnxExportJob")
    shutil.copy(i6.FIXTURES / f"{i6.MODEL_MODULE}.py", job.output)
    epilog = i6.model_epilog() + f"\nfrom {i6.MODEL_MODULE} import export"
    job.config.write_text(i6.serialize_config({"backend": "torch"}, epilog=epilog))
    checkpoint = trained_job.job.models / f"epoch.{i6.NUM_EPOCHS:03d}.pt"
    out = job.output / "model.onnx"
    command = i6.tool_command(
        "torch_export_to_onnx.py", str(job.config), str(checkpoint), str(out), "--verbosity", "5", "--device", "cpu"
    )
    proc = i6.run([*command, "--input_names", "data", "--output_names", "logits"], job.work)
    assert proc.returncode == 0, i6.describe(proc)
    graph = onnx.load(str(out)).graph
    assert [node.name for node in graph.input] == ["data"] and [node.name for node in graph.output] == ["logits"]
    # the exported graph computes what the checkpoint's model computes (onnx's own reference evaluator runs it)
    from onnx.reference import ReferenceEvaluator

    model = i6.reference_model(checkpoint)
    features = np.random.default_rng(3).normal(size=(2, 9, i6.MODEL_CONFIG["in_dim"])).astype(np.float32)
    (logits,) = ReferenceEvaluator(str(out)).run(None, {"data": features})
    with torch.no_grad():
        expected = model(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
