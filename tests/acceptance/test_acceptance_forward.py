"""Acceptance: ReturnnForwardJobV2 as Mini-RETURNN pipelines use it, on the best checkpoint of the training job.

Each job writes its config (``task = "forward"``, ``load`` = the absolute path of GetBestPtCheckpointJob's
``checkpoint.pt``, the forward functions imported from the model code, the init hook a ``functools.partial`` with
its ``config`` dict) and runs ``rnn.py`` in a fresh temporary directory; afterwards the files named in
``output_files`` must be there. The outputs are read as i6_core's jobs read them and compared with what the
checkpoint's model computes in this process.
"""

from __future__ import annotations

import os

import i6_pipeline as i6
import numpy as np
import pytest
import torch

from returnn.datasets import init_dataset


def _reference_outputs(checkpoint: str, features_hdf: str) -> tuple[dict[str, str], np.ndarray]:
    """Greedy hypotheses per tag and the log prior, computed directly from the checkpoint's parameters."""
    model = i6.reference_model(checkpoint)
    dataset = init_dataset({"class": "HDFDataset", "files": [features_hdf]})
    dataset.init_seq_order(epoch=1)
    hyps, probs = {}, []
    with torch.no_grad():
        for seq_idx in range(dataset.num_seqs):
            dataset.load_seqs(seq_idx, seq_idx + 1)
            logits = model(torch.from_numpy(dataset.get_data(seq_idx, "data")))
            best = logits.argmax(dim=-1).tolist()
            collapsed = [label for t, label in enumerate(best) if t == 0 or label != best[t - 1]]
            hyps[dataset.get_tag(seq_idx)] = " ".join(i6.LABELS[label] for label in collapsed)
            probs.append(torch.softmax(logits, dim=-1).double().numpy())
    return hyps, np.log(np.concatenate(probs).mean(axis=0))


@pytest.fixture(scope="module")
def best_checkpoint(trained_job, tmp_path_factory) -> str:
    job = i6.JobDir.create(tmp_path_factory.mktemp("best") / "GetBestPtCheckpointJob")
    return str(i6.get_best_pt_checkpoint(trained_job.job, "dev_loss_ce", 0, job))


@pytest.fixture(scope="module")
def reference(best_checkpoint, trained_job) -> tuple[dict[str, str], np.ndarray]:
    return _reference_outputs(best_checkpoint, str(trained_job.corpus.dev_features))


def _run_forward_job(tmp_path, trained_job, best_checkpoint, name: str, **options) -> str:
    """Run the job; returns its temporary working directory, after checking that the training job's files and the
    checkpoint were left alone."""
    config = {
        "backend": "torch",
        "batch_size": 400,
        "max_seqs": 5,
        "forward": {"class": "HDFDataset", "files": [str(trained_job.corpus.dev_features)]},
        **options,
    }
    epilog = i6.model_epilog(forward=name, hook_config={"labels": i6.LABELS})
    job, cwd = i6.forward_job(tmp_path, name, best_checkpoint, config, epilog)
    before = i6.snapshot(trained_job.job.path)
    proc = i6.run(i6.rnn_command(job.config), cwd)
    assert proc.returncode == 0, i6.describe(proc)
    assert proc.stdout == "" and proc.stderr == ""
    assert i6.snapshot(trained_job.job.path) == before
    return cwd


@pytest.mark.slow
def test_search_job_writes_search_out_py(tmp_path, trained_job, best_checkpoint, reference):
    # num_workers_per_gpu as in real forward configs: the worker process rebuilds this config from its file
    cwd = _run_forward_job(tmp_path, trained_job, best_checkpoint, "search", num_workers_per_gpu=1)
    assert sorted(os.listdir(cwd)) == ["returnn.log", "search_out.py"]  # output_files=["search_out.py"], and the log
    text = (cwd / "search_out.py").read_text()
    # SearchWordsToCTMJob / SearchBPEtoWordsJob: eval of the file
    hyps = eval(text, {"nan": float("nan"), "inf": float("inf")})
    expected_hyps, _ = reference
    assert hyps == expected_hyps
    assert len(hyps) == 16 and all(tag.startswith("dev/recording") for tag in hyps)
    log = (cwd / "returnn.log").read_text()
    epoch = torch.load(best_checkpoint, weights_only=True)["epoch"]
    assert f"forward: batches=4 epoch={epoch}" in log  # 16 sequences, 5 per batch


@pytest.mark.slow
def test_prior_job_writes_prior_txt(tmp_path, trained_job, best_checkpoint, reference):
    cwd = _run_forward_job(tmp_path, trained_job, best_checkpoint, "prior")
    assert sorted(os.listdir(cwd)) == ["prior.txt", "returnn.log"]
    prior = np.loadtxt(cwd / "prior.txt")  # as the recognition setups read it
    _, expected_prior = reference
    assert prior.shape == (3,)
    np.testing.assert_allclose(prior, expected_prior, rtol=0, atol=1e-6)
    assert abs(np.exp(prior).sum() - 1.0) < 1e-6
