"""Tests for TranslationDataset and TranslationFactorsDataset (returnn.datasets.lm)."""

from __future__ import annotations

import gzip
import pickle

import pytest

from returnn.datasets import init_dataset
from returnn.datasets.lm import TranslationDataset, TranslationFactorsDataset
from returnn.errors import DatasetError

SOURCE_VOCAB = {"</S>": 0, "<UNK>": 1, "das": 2, "haus": 3, "ist": 4, "groß": 5}
TARGET_VOCAB = {"</S>": 0, "<UNK>": 1, "the": 2, "house": 3, "is": 4, "big": 5}


def write_vocab(path, vocab: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(vocab, f)


@pytest.fixture
def epoch_seqs(read_epoch):
    """``epoch_seqs(dataset, keys=("data", "classes"), epoch=1)``: per sequence (tag, label list of each key)."""

    def epoch_seqs(dataset, keys=("data", "classes"), epoch=1) -> list[tuple]:
        return [(tag, *[data[key].tolist() for key in keys]) for tag, data in read_epoch(dataset, epoch, keys)]

    return epoch_seqs


@pytest.fixture
def corpus_dir(tmp_path):
    with gzip.open(tmp_path / "source.train.gz", "wt", encoding="utf-8") as f:
        f.write("das haus\ndas haus ist groß\nhaus\n")
    (tmp_path / "target.train").write_text("the house\nthe house is big\nhouse\n", encoding="utf-8")
    write_vocab(tmp_path / "source.vocab.pkl", SOURCE_VOCAB)
    write_vocab(tmp_path / "target.vocab.pkl", TARGET_VOCAB)
    return str(tmp_path)


def test_parallel_text_with_postfixes(corpus_dir, epoch_seqs):
    dataset = TranslationDataset(path=corpus_dir, file_postfix="train", source_postfix=" </S>", target_postfix=" </S>")
    assert dataset.get_data_keys() == ["data", "classes"]
    assert dataset.num_outputs == {"data": (6, 1), "classes": (6, 1)}
    assert epoch_seqs(dataset) == [
        ("line-0", [2, 3, 0], [2, 3, 0]),
        ("line-1", [2, 3, 4, 5, 0], [2, 3, 4, 5, 0]),
        ("line-2", [3, 0], [3, 0]),
    ]
    clone = pickle.loads(pickle.dumps(dataset))
    assert epoch_seqs(clone)[2] == ("line-2", [3, 0], [3, 0])


def test_seq_list_file_and_source_only(corpus_dir, tmp_path, epoch_seqs):
    (tmp_path / "lines.txt").write_text("2\n0\n", encoding="utf-8")
    dataset = init_dataset(
        {"class": "TranslationDataset", "path": corpus_dir, "file_postfix": "train", "source_only": True,
         "seq_list_file": str(tmp_path / "lines.txt")}
    )  # fmt: skip
    assert dataset.get_data_keys() == ["data"]
    assert epoch_seqs(dataset, keys=("data",)) == [("line-2", [3]), ("line-0", [2, 3])]


def test_search_without_reference_keeps_classes_empty(corpus_dir, tmp_path, epoch_seqs):
    (tmp_path / "target.train").unlink()
    dataset = TranslationDataset(path=corpus_dir, file_postfix="train", search_without_reference=True)
    assert dataset.get_data_keys() == ["data", "classes"]
    assert epoch_seqs(dataset)[1] == ("line-1", [2, 3, 4, 5], [])


def test_unknown_words(corpus_dir, tmp_path, epoch_seqs):
    (tmp_path / "target.train").write_text("the house\nthe hut is big\nhouse\n", encoding="utf-8")
    strict = TranslationDataset(path=corpus_dir, file_postfix="train")
    with pytest.raises(
        DatasetError, match=r"target line 1 \('line-1'\): word 'hut' is not in the vocabulary of 'classes'"
    ):
        strict.init_seq_order(epoch=1)
    lenient = TranslationDataset(path=corpus_dir, file_postfix="train", unknown_label="<UNK>")
    assert epoch_seqs(lenient)[1] == ("line-1", [2, 3, 4, 5], [2, 1, 4, 5])
    with pytest.raises(DatasetError, match=r"unknown_label 'UNK' is not in the vocabulary of 'data'"):
        TranslationDataset(path=corpus_dir, file_postfix="train", unknown_label={"data": "UNK"})


def test_bad_corpus_files(corpus_dir, tmp_path):
    with pytest.raises(DatasetError, match=r"file '.*source.vocab.pkl' \(or .gz\) does not exist"):
        TranslationDataset(path=str(tmp_path / "elsewhere"), file_postfix="train")
    (tmp_path / "target.train").write_text("the house\n", encoding="utf-8")
    dataset = TranslationDataset(path=corpus_dir, file_postfix="train")
    with pytest.raises(DatasetError, match=r"1 target lines but 3 source lines"):
        dataset.get_total_num_seqs()


def test_translation_factors(tmp_path, epoch_seqs):
    (tmp_path / "source.dev").write_text("das|A|x haus|B|y\n", encoding="utf-8")
    (tmp_path / "target.dev").write_text("the|1 house|2\n", encoding="utf-8")
    write_vocab(tmp_path / "source.vocab.pkl", SOURCE_VOCAB)
    write_vocab(tmp_path / "target.vocab.pkl", TARGET_VOCAB)
    write_vocab(tmp_path / "case.vocab.pkl", {"</S>": 0, "A": 1, "B": 2})
    write_vocab(tmp_path / "tag.vocab.pkl", {"</S>": 0, "x": 1, "y": 2})
    write_vocab(tmp_path / "num.vocab.pkl", {"</S>": 0, "1": 1, "2": 2})
    dataset = TranslationFactorsDataset(
        path=str(tmp_path), file_postfix="dev", source_factors=["case", "tag"], target_factors=["num"],
        source_postfix=" </S>",
    )  # fmt: skip
    assert dataset.get_data_keys() == ["data", "case", "tag", "classes", "num"]
    assert epoch_seqs(dataset, keys=("data", "case", "tag", "classes", "num")) == [
        ("line-0", [2, 3, 0], [1, 2, 0], [1, 2, 0], [2, 3], [1, 2])
    ]
    (tmp_path / "source.dev").write_text("das|A haus|B|y\n", encoding="utf-8")
    broken = TranslationFactorsDataset(path=str(tmp_path), file_postfix="dev", source_factors=["case", "tag"])
    with pytest.raises(
        DatasetError, match=r"source line 0: word 'das\|A' has 2 factor\(s\) separated by '\|', expected 3"
    ):
        broken.init_seq_order(epoch=1)
