"""Tests for LmDataset (returnn.datasets.lm)."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.lm import LmDataset
from returnn.errors import DatasetError

CHARS = ["[END]", "[UNKNOWN]", "[START]", " ", "a", "b", "c", "ä", "[NOISE]"]


@pytest.fixture
def epoch_data(read_epoch):
    """``epoch_data(dataset, key="data", epoch=1)``: per sequence (tag, label list)."""

    def epoch_data(dataset, key: str = "data", epoch: int | None = 1) -> list[tuple[str, list[int]]]:
        return [(tag, data[key].tolist()) for tag, data in read_epoch(dataset, epoch, [key])]

    return epoch_data


@pytest.fixture
def symbols_file(tmp_path):
    path = tmp_path / "symbols.txt"
    path.write_text("\n".join(CHARS) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def char_corpus(tmp_path):
    path = tmp_path / "corpus.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("ab  c\n\nä[noise]\ncab\n")
    return str(path)


def test_char_corpus_gzip_unicode_and_special_symbols(char_corpus, symbols_file, epoch_data):
    dataset = LmDataset(corpus_file=char_corpus, orth_symbols_file=symbols_file)
    assert dataset._seqs is None  # nothing read before first use
    assert dataset.num_outputs == {"data": (9, 1)}
    assert dataset.get_data_keys() == ["data"]
    assert epoch_data(dataset) == [
        ("line-0", [4, 5, 3, 6, 0]),
        ("line-1", [7, 8, 0]),
        ("line-2", [6, 4, 5, 0]),
    ]
    assert dataset.get_data(0, "data").dtype == np.int32
    assert dataset.have_get_corpus_seq()
    assert dataset.get_corpus_seq(1).get_data("data").tolist() == [7, 8, 0]


def test_word_based_with_symbol_map_file_replaces_unknown_words(tmp_path, epoch_data):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\nhello there world\n", encoding="utf-8")
    symbol_map = tmp_path / "map.txt"
    symbol_map.write_text("</s> 0\n<unk> 1\nhello 2\nworld 3\n", encoding="utf-8")
    dataset = LmDataset(
        corpus_file=str(corpus), orth_symbols_map_file=str(symbol_map), word_based=True,
        seq_end_symbol="</s>", unknown_symbol="<unk>",
    )  # fmt: skip
    assert dataset.labels["data"] == ["</s>", "<unk>", "hello", "world"]
    assert epoch_data(dataset) == [("line-0", [2, 3, 0]), ("line-1", [2, 1, 3, 0])]


def test_bliss_corpus_and_several_files(tmp_path, symbols_file, char_corpus, epoch_data):
    bliss = tmp_path / "corpus.xml.gz"
    with gzip.open(bliss, "wt", encoding="utf-8") as f:
        f.write(
            '<?xml version="1.0" encoding="utf8"?>\n<corpus name="c">\n'
            '<recording name="r1" audio="r1.wav"><segment name="s1" start="0" end="1"><orth> a\n b </orth></segment>'
            '<segment name="s2"><orth>c</orth></segment></recording>\n'
            '<subcorpus name="sub"><recording name="r2"><segment name="s3"><orth>ä</orth></segment></recording>'
            "</subcorpus>\n</corpus>\n"
        )
    dataset = LmDataset(corpus_file=[str(bliss), char_corpus], orth_symbols_file=symbols_file, seq_end_symbol=None)
    assert [seq for _, seq in epoch_data(dataset)] == [[4, 3, 5], [6], [7], [4, 5, 3, 6], [7, 8], [6, 4, 5]]


def test_delayed_data_and_replace_map(tmp_path, symbols_file, epoch_data):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("äbx\n", encoding="utf-8")
    replace_map = tmp_path / "replace.json"
    replace_map.write_text('{"x": "ca", "ä": "a"}', encoding="utf-8")
    dataset = LmDataset(
        corpus_file=str(corpus), orth_symbols_file=symbols_file, orth_replace_map_file=str(replace_map),
        add_delayed_seq_data=True,
    )  # fmt: skip
    assert dataset.get_data_keys() == ["data", "delayed"]
    assert epoch_data(dataset) == [("line-0", [4, 5, 6, 4, 0])]
    assert epoch_data(dataset, "delayed") == [("line-0", [2, 4, 5, 6, 4])]


def test_unknown_symbols_error_skip_or_replace(tmp_path, symbols_file, epoch_data):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ab\naxb\nba\n", encoding="utf-8")
    dataset = LmDataset(corpus_file=str(corpus), orth_symbols_file=symbols_file)
    with pytest.raises(DatasetError, match=r"corpus.txt', sequence 2: symbol 'x' is not one of the labels; add it"):
        dataset.init_seq_order(epoch=1)
    skipping = LmDataset(corpus_file=str(corpus), orth_symbols_file=symbols_file, error_on_invalid_seq=False)
    assert epoch_data(skipping) == [("line-0", [4, 5, 0]), ("line-1", [5, 4, 0])]
    replacing = LmDataset(corpus_file=str(corpus), orth_symbols_file=symbols_file, auto_replace_unknown_symbol=True)
    assert epoch_data(replacing)[1] == ("line-1", [4, 1, 5, 0])


def test_orth_vocab(tmp_path, epoch_data):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat\nthe dog\n", encoding="utf-8")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(repr({"</s>": 0, "<unk>": 1, "the": 2, "cat": 3}), encoding="utf-8")
    dataset = LmDataset(
        corpus_file=str(corpus), orth_vocab={"vocab_file": str(vocab), "unknown_label": "<unk>", "seq_postfix": [0]}
    )
    assert epoch_data(dataset) == [("line-0", [2, 3, 0]), ("line-1", [2, 1, 0])]


def test_ordering_partition_sharding_and_pickle(tmp_path, symbols_file, epoch_data):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc\na\nab\nabcab\n", encoding="utf-8")
    opts = {"class": "LmDataset", "corpus_file": str(corpus), "orth_symbols_file": symbols_file}
    dataset = init_dataset({**opts, "seq_ordering": "sorted"})
    assert [tag for tag, _ in epoch_data(dataset)] == ["line-1", "line-2", "line-0", "line-3"]
    partitioned = init_dataset({**opts, "partition_epoch": 2})
    assert [tag for tag, _ in epoch_data(partitioned, epoch=2)] == ["line-2", "line-3"]
    assert partitioned.supports_sharding()
    partitioned.set_sharding(1, 2)
    clone = pickle.loads(pickle.dumps(partitioned))
    assert [tag for tag, _ in epoch_data(clone, epoch=1)] == ["line-1"]


def test_bad_options(tmp_path, symbols_file, char_corpus):
    with pytest.raises(DatasetError, match=r"give exactly one of orth_symbols_file, .*\(got none\)"):
        LmDataset(corpus_file=char_corpus)
    with pytest.raises(
        DatasetError,
        match=r"delayed_seq_data_start_symbol='<s>' is not one of the 9 labels; add it to the labels or set",
    ):
        LmDataset(
            corpus_file=char_corpus, orth_symbols_file=symbols_file, add_delayed_seq_data=True,
            delayed_seq_data_start_symbol="<s>",
        )  # fmt: skip
    missing = LmDataset(corpus_file=str(tmp_path / "nope.txt"), orth_symbols_file=symbols_file)
    with pytest.raises(DatasetError, match=r"cannot open dataset 'LmDataset' \(LmDataset\) corpus_file '.*nope.txt'"):
        missing.get_total_num_seqs()
    bad_map = tmp_path / "map.txt"
    bad_map.write_text("a 0\nb\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"map.txt', line 2: expected '<symbol> <index>', got 'b'"):
        LmDataset(corpus_file=char_corpus, orth_symbols_map_file=str(bad_map))
