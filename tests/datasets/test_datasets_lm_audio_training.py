"""Short training runs (Engine(config).train()) fed by the text and audio datasets, written in the tests."""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any

import numpy as np
import pytest
import torch

from returnn.config import Config
from returnn.learning_rate_control import load_learning_rate_file
from returnn.torch.engine import Engine

WORDS = ["<s>", "</s>", "<unk>", "the", "cat", "dog", "sat", "ran", "on", "mat", "a"]
SENTENCES = ["the cat sat on the mat", "a dog ran", "the dog sat", "a cat ran on a mat", "the cat ran"] * 4


class TokenModel(torch.nn.Module):
    """Embeds label sequences (or projects feature frames) and predicts a label per frame."""

    def __init__(self, num_inputs: int, num_outputs: int, dense: bool = False):
        super().__init__()
        self.dense = dense
        self.embed = torch.nn.Linear(num_inputs, 16) if dense else torch.nn.Embedding(num_inputs, 16)
        self.out = torch.nn.Linear(16, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(x.float() if self.dense else x.long())))


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, run_ctx: Any) -> None:
    mask = torch.arange(logits.shape[1])[None, :] < lengths[:, None]
    loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask].long(), reduction="sum")
    run_ctx.mark_as_loss(loss, "ce", inv_norm_factor=mask.sum())


def lm_train_step(*, model, data, run_ctx, **kwargs):
    masked_ce(model(data["delayed"]), data["data"], data["data:size1"], run_ctx)


def translation_train_step(*, model, data, run_ctx, **kwargs):
    # predict each target word from the source word at the same position (the toy corpus is word-aligned)
    masked_ce(model(data["data"]), data["classes"], data["classes:size1"], run_ctx)


def ctc_train_step(*, model, data, run_ctx, **kwargs):
    assert isinstance(data["raw"], list) and isinstance(data["raw"][0], str)
    log_probs = model(data["data"]).log_softmax(-1).transpose(0, 1)  # [T, B, C]
    loss = torch.nn.functional.ctc_loss(
        log_probs, data["classes"].long(), data["data:size1"], data["classes:size1"],
        blank=log_probs.shape[-1] - 1, reduction="sum",
    )  # fmt: skip
    run_ctx.mark_as_loss(loss, "ctc", inv_norm_factor=data["classes:size1"].sum())


def train(tmp_path, dataset: dict, model_args: tuple, train_step, num_epochs: int = 2, **options) -> dict:
    """Train a :class:`TokenModel` built from ``model_args`` inside get_model, so the engine's seed fixes its init."""
    items = {
        "get_model": lambda **kwargs: TokenModel(*model_args),
        "train_step": train_step,
        "model": str(tmp_path / "models" / "epoch"),
        "learning_rate_file": str(tmp_path / "learning_rates"),
        "num_epochs": num_epochs,
        "train": dict(dataset, seq_ordering="laplace:2"),
        "dev": dict(dataset, seq_ordering="sorted_reverse"),
        "optimizer": {"class": "adam"},
        "learning_rate": 0.05,
        "batch_size": 400,
        "device": "cpu",
        "num_workers_per_gpu": 0,
        **options,
    }
    Engine(Config({key: value for key, value in items.items() if value is not None})).train()
    assert (tmp_path / "models" / f"epoch.{num_epochs:03d}.pt").exists()
    return {epoch: data.error for epoch, data in load_learning_rate_file(str(tmp_path / "learning_rates")).items()}


def test_lm_dataset_trains_a_language_model(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    (tmp_path / "words.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    dataset = {
        "class": "LmDataset", "corpus_file": str(tmp_path / "corpus.txt"),
        "orth_symbols_file": str(tmp_path / "words.txt"),
        "word_based": True, "seq_end_symbol": "</s>", "unknown_symbol": "<unk>", "add_delayed_seq_data": True,
        "delayed_seq_data_start_symbol": "<s>",
    }  # fmt: skip
    scores = train(tmp_path, dataset, (len(WORDS), len(WORDS)), lm_train_step, num_epochs=3)
    assert list(scores) == [1, 2, 3]
    assert scores[3]["dev_loss_ce"] < scores[1]["dev_loss_ce"] < np.log(len(WORDS))


def test_translation_dataset_trains(tmp_path):
    (tmp_path / "source.train").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    (tmp_path / "target.train").write_text("\n".join(s.upper() for s in SENTENCES) + "\n", encoding="utf-8")
    for side, words in (("source", WORDS), ("target", [w.upper() for w in WORDS])):
        with open(tmp_path / f"{side}.vocab.pkl", "wb") as f:
            pickle.dump({word: i for i, word in enumerate(words)}, f)
    dataset = {"class": "TranslationDataset", "path": str(tmp_path), "file_postfix": "train"}
    scores = train(tmp_path, dataset, (len(WORDS), len(WORDS)), translation_train_step)
    assert scores[2]["dev_loss_ce"] < scores[1]["dev_loss_ce"]


def make_speech_zip(tmp_path) -> tuple[str, str]:
    """Sequences of tones, one tone per character: 'a' = 400 Hz, 'b' = 1200 Hz; 8 kHz audio in flac."""
    soundfile = pytest.importorskip("soundfile")
    rng = np.random.RandomState(0)
    entries = []
    with zipfile.ZipFile(tmp_path / "speech.zip", "w") as zf:
        for i in range(12):
            text = "".join(rng.choice(["a", "b"], size=rng.randint(1, 4)))
            t = np.arange(800) / 8000
            audio = np.concatenate([np.sin(2 * np.pi * (400 if c == "a" else 1200) * t) for c in text]) * 0.3
            buffer = io.BytesIO()
            soundfile.write(buffer, audio.astype(np.float32), 8000, format="FLAC")
            zf.writestr(f"speech/s{i}.flac", buffer.getvalue())
            entries.append({"text": text, "duration": len(text) * 0.1, "file": f"s{i}.flac", "seq_name": f"utt{i}"})
        zf.writestr("speech.txt", repr(entries))
    (tmp_path / "chars.txt").write_text(repr({"a": 0, "b": 1}), encoding="utf-8")
    return str(tmp_path / "speech.zip"), str(tmp_path / "chars.txt")


@pytest.mark.slow
def test_ogg_zip_dataset_trains_ctc_with_worker_processes(tmp_path):
    zip_path, vocab_file = make_speech_zip(tmp_path)
    dataset = {
        "class": "OggZipDataset", "path": zip_path,
        "audio": {"features": "log_mel_filterbank", "num_feature_filters": 20, "preemphasis": 0.97},
        "targets": {"class": "CharacterTargets", "vocab_file": vocab_file, "unknown_label": None},
    }  # fmt: skip
    # without dev, only the train loader starts a worker process (about 2 s)
    scores = train(tmp_path, dataset, (20, 3, True), ctc_train_step, num_epochs=3, num_workers_per_gpu=1, dev=None)
    assert scores[3]["train_loss_ctc"] < scores[1]["train_loss_ctc"]
