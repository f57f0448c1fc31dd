"""End to end: every demo runs as ``python rnn.py demos/<name>.config`` in a fresh directory, with less data and
fewer epochs (``++`` overrides), and must have learned something: losses fall, error rates end below a bound.

The bounds are far from what a model that learned nothing gets (chance, or the best context-free guess), and far
enough above what the reduced runs reach that they do not depend on the machine.
"""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from returnn.torch.metrics_log import read_metrics_csv

REPO = Path(__file__).resolve().parent.parent
DEMOS = REPO / "demos"


def test_every_demo_has_a_header_and_a_test():
    """Each demo says what it shows and what to expect, and has an end-to-end test here."""
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    for path in sorted(DEMOS.glob("*.config")):
        header = path.read_text(encoding="utf-8").split("\n\n", 1)[0]
        assert header.startswith("#!rnn.py\n# "), path.name
        for part in ("# What it shows:", f"#     python rnn.py demos/{path.name}", "# Expected (2 CPU cores"):
            assert part in header, f"{path.name}: the header lacks {part!r}"
        assert path.stem in tested, f"{path.name} has no test_{path.stem} in {__file__}"


def run_demo(cwd: Path, config: str, *, processes: int = 1, **overrides: object) -> str:
    """Run ``rnn.py demos/<config> ++key value ...`` in ``cwd`` (with ``processes`` > 1: under torchrun); returns its
    stdout."""
    # The demo models are small: one thread each is as fast, and far faster when other processes share the cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={processes}"]
    command = [*launcher, str(REPO / "rnn.py"), str(DEMOS / config)]
    for key, value in overrides.items():
        command += [f"++{key}", str(value)]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def read_learning_rates(path: Path) -> dict[int, tuple[float, dict[str, float]]]:
    """The learning_rates file, read as pipelines see it: ``{epoch: EpochData(learningRate=..., error={...})}``,
    parsed without evaluating it. Returns ``{epoch: (learning rate, scores)}``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), mode="eval")
    assert isinstance(tree.body, ast.Dict)
    epochs = {}
    for key, value in zip(tree.body.keys, tree.body.values):
        assert isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "EpochData"
        fields = {keyword.arg: ast.literal_eval(keyword.value) for keyword in value.keywords}
        epochs[ast.literal_eval(key)] = (fields["learningRate"], fields["error"])
    return epochs


def scores(epochs: dict[int, tuple[float, dict[str, float]]], key: str) -> list[float]:
    """One score over the epochs, in epoch order."""
    return [epochs[epoch][1][key] for epoch in sorted(epochs)]


def log_values(text: str, key: str) -> list[float]:
    """Every ``key=<number>`` in a log text, in order."""
    return [float(match) for match in re.findall(rf"\b{re.escape(key)}=([-+0-9.eE]+|nan|inf)", text)]


@pytest.mark.slow
def test_frame_classification(tmp_path):
    stdout = run_demo(tmp_path, "frame_classification.config", num_epochs=3, demo_train_seqs=200, demo_dev_seqs=50)
    out = tmp_path / "demo-output" / "frame_classification"
    assert sorted(os.listdir(out / "data")) == ["dev.hdf", "train.hdf"]
    epochs = read_learning_rates(out / "learning_rates")
    assert sorted(epochs) == [1, 2, 3]
    for learning_rate, epoch_scores in epochs.values():
        assert learning_rate <= 0.005
        assert sorted(epoch_scores) == ["dev_loss_ce", "dev_loss_fer", "train_loss_ce", "train_loss_fer"]
    dev_ce, dev_fer = scores(epochs, "dev_loss_ce"), scores(epochs, "dev_loss_fer")
    assert dev_ce[2] < dev_ce[1] < dev_ce[0]
    # chance is 0.875, the best frame-by-frame classifier about 0.55; the reduced run gets about 0.2
    assert dev_fer[2] < 0.4
    # cleanup_old_models (keep_last_n 2, keep_best_n 1): epoch 1 is neither recent nor best in any score
    assert sorted(os.listdir(out / "models")) == [
        "epoch.002.opt.pt",
        "epoch.002.pt",
        "epoch.003.opt.pt",
        "epoch.003.pt",
    ]
    assert log_values(stdout, "dev_loss_fer") == pytest.approx(dev_fer, rel=1e-4)
    assert "epoch=3 dataset=dev" in (out / "log").read_text(encoding="utf-8")  # the log file has verbosity 4
    metrics = read_metrics_csv(str(out / "metrics.csv"))
    assert [row["value"] for row in metrics if row["key"] == "dev_loss_fer"] == pytest.approx(dev_fer, rel=1e-12)


def _octal_hyp(binary_digits: list[int]) -> str:
    """The correct answer of the seq2seq demo, as search_out.py writes it: octal digits separated by spaces."""
    return " ".join(format(int("".join(map(str, binary_digits)), 2), "o"))


@pytest.mark.slow
def test_seq2seq(tmp_path):
    data = {"demo_max_digits": 9, "demo_eval_seqs": 100}
    run_demo(tmp_path, "seq2seq.config", num_epochs=2, demo_train_seqs=1500, **data)
    out = tmp_path / "demo-output" / "seq2seq"
    epochs = read_learning_rates(out / "learning_rates")
    dev_ctc, dev_err = scores(epochs, "dev_loss_ctc"), scores(epochs, "dev_loss_err")
    assert dev_ctc[1] < dev_ctc[0]
    assert dev_err[1] < 0.6  # label error rate of greedy decoding; about 0.3 here, 1.0 for an untrained model

    stdout = run_demo(tmp_path, "seq2seq.config", task="forward", **data)
    assert "using the newest checkpoint demo-output/seq2seq/models/epoch.002.pt" in stdout
    hyps = ast.literal_eval((out / "search_out.py").read_text(encoding="utf-8"))
    from returnn.datasets.generating import TaskNumberBaseConvertDataset

    # the forward dataset of the config, rebuilt here to get the numbers behind the tags
    dataset = TaskNumberBaseConvertDataset(
        input_base=2, output_base=8, min_input_seq_len=3, max_input_seq_len=9, num_seqs=100, fixed_random_seed=10_002
    )
    dataset.init_seq_order(epoch=1)
    refs = {}
    for idx in range(100):
        seq = dataset.get_corpus_seq(idx)
        refs[seq.seq_tag] = _octal_hyp(seq.features["data"].tolist())
    assert sorted(hyps) == sorted(refs)
    seq_error_rate = sum(hyps[tag] != refs[tag] for tag in refs) / len(refs)
    assert log_values(stdout, "seq_error_rate") == [pytest.approx(seq_error_rate, abs=1e-4)]
    assert seq_error_rate < 0.8  # about 0.5 after this short training; 1.0 untrained
    assert log_values(stdout, "label_error_rate")[0] < 0.6

    # under torchrun with 2 processes, into an absolute path as pipelines give it: the same search_out.py, and the
    # error rates over all sequences
    output = out / "search_out-2.py"
    stdout = run_demo(tmp_path, "seq2seq.config", task="forward", processes=2, search_output_file=output, **data)
    assert output.read_text(encoding="utf-8") == (out / "search_out.py").read_text(encoding="utf-8")
    assert log_values(stdout, "seq_error_rate") == [pytest.approx(seq_error_rate, abs=1e-4)]
    assert not (tmp_path / "forward-parts").exists()


@pytest.mark.slow
def test_lm(tmp_path):
    stdout = run_demo(tmp_path, "lm.config", num_epochs=2, demo_train_sentences=1000, demo_dev_sentences=200)
    out = tmp_path / "demo-output" / "lm"
    epochs = read_learning_rates(out / "learning_rates")
    dev_ppl = [math.exp(ce) for ce in scores(epochs, "dev_loss_ce")]
    assert log_values(stdout, "dev_ppl") == pytest.approx(dev_ppl, abs=1e-3)
    assert dev_ppl[1] < dev_ppl[0]
    assert dev_ppl[1] < 20  # a unigram model gets about 44 on this corpus; the reduced run about 12
    assert len((out / "data" / "vocab.txt").read_text(encoding="utf-8").split()) == 58


@pytest.mark.slow
def test_chunking(tmp_path):
    run_demo(tmp_path, "chunking.config", num_epochs=2, demo_train_seqs=20, demo_dev_seqs=5)
    out = tmp_path / "demo-output" / "chunking"
    epochs = read_learning_rates(out / "learning_rates")
    dev_ce, dev_fer = scores(epochs, "dev_loss_ce"), scores(epochs, "dev_loss_fer")
    assert dev_ce[1] < dev_ce[0]
    assert dev_fer[1] < 0.4  # about 0.23 here; chance is 0.875
    # batches of chunks: at most 100 frames each, 32 per batch, so little padding and many more items than sequences
    stats = [line for line in (out / "log").read_text(encoding="utf-8").splitlines() if "dataset=train" in line]
    stats = [line for line in stats if line.startswith("batch statistics:")]
    assert len(stats) == 2
    for line in stats:
        assert log_values(line, "max_padded") == [3200, 3200]  # for data and classes
        assert all(padding < 0.1 for padding in log_values(line, "padding"))  # whole sequences: about 0.3
        assert log_values(line, "seqs")[0] >= 20 * 500 / 80 - 20  # chunks: each sequence has 500+ frames


@pytest.mark.slow
def test_accum_amp(tmp_path):
    import torch

    stdout = run_demo(tmp_path, "accum_amp.config", num_epochs=2, demo_train_seqs=200, demo_dev_seqs=50)
    assert "autocast: the model's output is torch.bfloat16" in stdout
    out = tmp_path / "demo-output" / "accum_amp"
    epochs = read_learning_rates(out / "learning_rates")
    dev_ce, dev_fer = scores(epochs, "dev_loss_ce"), scores(epochs, "dev_loss_fer")
    assert dev_ce[1] < dev_ce[0]
    assert dev_fer[1] < 0.4  # about 0.25 here; chance is 0.875
    # one update per 4 steps: Adam counts updates, the checkpoint counts steps; the remainder is kept for later
    steps = torch.load(out / "models" / "epoch.002.pt", weights_only=True)["step"]
    optimizer = torch.load(out / "models" / "epoch.002.opt.pt", weights_only=True)
    assert steps > 20
    assert {float(state["step"]) for state in optimizer["optimizer"]["state"].values()} == {float(steps // 4)}
    assert (optimizer["pending_grads"] is None) == (steps % 4 == 0)


@pytest.mark.slow
def test_custom_engine(tmp_path):
    stdout = run_demo(tmp_path, "custom_engine.config", num_epochs=2, demo_train_seqs=200, demo_dev_seqs=50)
    epochs = read_learning_rates(tmp_path / "demo-output" / "custom_engine" / "learning_rates")
    keys = ["dev_ema_loss_ce", "dev_ema_loss_fer", "dev_loss_ce", "dev_loss_fer", "train_loss_ce", "train_loss_fer"]
    assert [sorted(epoch_scores) for _, epoch_scores in epochs.values()] == [keys, keys]
    assert scores(epochs, "dev_loss_fer")[1] < 0.4  # about 0.26 here; chance is 0.875
    ema_ce = scores(epochs, "dev_ema_loss_ce")
    assert ema_ce[1] < ema_ce[0]  # the average catches up with the trained weights
    assert ema_ce != scores(epochs, "dev_loss_ce")
    assert log_values(stdout, "dev_ema_loss_ce") == pytest.approx(ema_ce, rel=1e-4)


def _hdf_seqs(path: Path) -> dict[str, np.ndarray]:
    """All sequences of an HDF file in RETURNN's layout ("inputs" only), read with plain h5py."""
    with h5py.File(path, "r") as f:
        lengths = f["seqLengths"][:, 0]
        starts = np.concatenate([[0], np.cumsum(lengths)])
        tags = [tag.decode() if isinstance(tag, bytes) else str(tag) for tag in f["seqTags"][:]]
        inputs = f["inputs"][:]
    return {tag: inputs[starts[i] : starts[i + 1]] for i, tag in enumerate(tags)}


@pytest.mark.slow
def test_meta_postprocessing(tmp_path, monkeypatch):
    overrides = {"demo_train_seqs": 100, "demo_dev_seqs": 50}
    run_demo(tmp_path, "meta_postprocessing.config", num_epochs=3, **overrides)
    out = tmp_path / "demo-output" / "meta_postprocessing"
    epochs = read_learning_rates(out / "augment" / "learning_rates")
    dev_ce, dev_fer = scores(epochs, "dev_loss_ce"), scores(epochs, "dev_loss_fer")
    assert dev_ce[2] < dev_ce[1] < dev_ce[0]
    assert dev_fer[2] < 0.45  # about 0.31 here; chance is 0.875

    # The config's datasets, read here: "data" from the features file, "classes" from the alignment file, joined by
    # tag; augmented features in train only.
    from returnn.config import load_config
    from returnn.datasets import init_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the config adds demos/ to it
    args = [str(DEMOS / "meta_postprocessing.config")]
    for key, value in overrides.items():
        args += [f"++{key}", str(value)]
    config = load_config(args)
    for part, augmented in (("train", True), ("dev", False)):
        features = _hdf_seqs(out / "data" / f"{part}.features.hdf")
        alignment = _hdf_seqs(out / "data" / f"{part}.alignment.hdf")
        dataset = init_dataset(config.typed_value(part))
        dataset.init_seq_order(epoch=1)
        assert sorted(dataset.get_data_keys()) == ["classes", "data"]
        num_seqs = 0
        while dataset.is_less_than_num_seqs(num_seqs):
            dataset.load_seqs(num_seqs, num_seqs + 1)
            tag = dataset.get_tag(num_seqs)
            data, classes = dataset.get_data(num_seqs, "data"), dataset.get_data(num_seqs, "classes")
            assert data.shape == features[tag].shape and data.dtype == np.float32
            assert np.array_equal(classes, alignment[tag])
            assert np.array_equal(data, features[tag]) != augmented, tag
            num_seqs += 1
        assert num_seqs == len(features) == len(alignment)


@pytest.mark.slow
def test_network_dict(tmp_path):
    run_demo(tmp_path, "network_dict.config", num_epochs=3, demo_train_seqs=200, demo_dev_seqs=40)
    out = tmp_path / "demo-output" / "network_dict"
    epochs = read_learning_rates(out / "learning_rates")
    assert set(epochs[3][1]) == {"train_score", "train_error", "dev_score", "dev_error"}  # RETURNN's network names
    dev_score, dev_error = scores(epochs, "dev_score"), scores(epochs, "dev_error")
    assert dev_score[-1] < dev_score[0]
    assert dev_error[-1] < 0.65  # about 0.46 here; 0.875 for guessing

    run_demo(tmp_path, "network_dict.config", task="forward", output_file="out.hdf", demo_dev_seqs=40)
    with h5py.File(tmp_path / "out.hdf", "r") as f:
        assert f["inputs"].shape[1] == 8 and len(f["seqTags"]) == 40
        assert np.allclose(f["inputs"][:].sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_network_attention(tmp_path):
    dev = {"demo_dev_seqs": 50}
    run_demo(tmp_path, "network_attention.config", num_epochs=3, demo_train_seqs=1000, max_seqs=8, **dev)
    epochs = read_learning_rates(tmp_path / "demo-output" / "network_attention" / "learning_rates")
    dev_error = scores(epochs, "dev_error")
    assert dev_error[-1] < dev_error[0]

    out = run_demo(
        tmp_path,
        "network_attention.config",
        task="search",
        search_output_file="hyps.py",
        search_output_file_format="py",
        **dev,
    )
    hyps = ast.literal_eval((tmp_path / "hyps.py").read_text(encoding="utf-8"))  # as pipelines read it
    assert sorted(hyps) == sorted(f"seq-{i}" for i in range(50))
    # the dev targets, as the config generates them
    from returnn.datasets.generating import TaskNumberBaseConvertDataset
    from returnn.torch.network.losses import edit_distance

    data = TaskNumberBaseConvertDataset(
        input_base=8, output_base=2, max_input_seq_len=6, num_seqs=50, fixed_random_seed=42
    )
    errors = ref_length = 0
    for tag, nbest in hyps.items():
        # the rec layer keeps the beam: [(score, "1 0 1 ..."), ...], best first
        assert len(nbest) == 4 and [s for s, _ in nbest] == sorted((s for s, _ in nbest), reverse=True)
        best = [int(label) for label in nbest[0][1].split()]
        assert set(best) <= {0, 1}  # the end label is not written
        ref = data.get_corpus_seq(int(tag.removeprefix("seq-"))).get_data("classes").tolist()
        errors += edit_distance(best, ref)
        ref_length += len(ref)
    label_error_rate = errors / ref_length
    assert log_values(out, "label_error_rate") == [pytest.approx(label_error_rate, abs=1e-4)]

    # under torchrun with 2 processes, each searching its share: the same hypotheses, in the same order
    search = {"task": "search", "search_output_file": "hyps-2.py", "search_output_file_format": "py"}
    out = run_demo(tmp_path, "network_attention.config", processes=2, **search, **dev)
    hyps_2 = ast.literal_eval((tmp_path / "hyps-2.py").read_text(encoding="utf-8"))
    assert list(hyps_2) == list(hyps)
    for tag, nbest in hyps.items():
        assert [text for _, text in hyps_2[tag]] == [text for _, text in nbest]
        assert [score for score, _ in hyps_2[tag]] == pytest.approx([score for score, _ in nbest], rel=1e-5)
    assert log_values(out, "label_error_rate") == [pytest.approx(label_error_rate, abs=1e-4)]
    # about 0.19 here; 0.6 for the best guess that ignores the input, 0.39 for a 1 and random bits of the right length
    assert label_error_rate < 0.3
