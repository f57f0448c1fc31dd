"""Tests for returnn.datasets.util.vocabulary and its BPE segmenters."""

from __future__ import annotations

import gzip
import pickle
import sys

import pytest

from returnn.datasets.util.vocabulary import (
    BytePairEncoding,
    CharacterTargets,
    SamplingBytePairEncoding,
    SentencePieces,
    Utf8ByteTargets,
    Vocabulary,
)
from returnn.errors import DatasetError


def write_dict_vocab(path, vocab: dict) -> str:
    path.write_text(repr(vocab), encoding="utf-8")
    return str(path)


@pytest.fixture
def word_vocab_file(tmp_path):
    return write_dict_vocab(
        tmp_path / "vocab.txt", {"<s>": 0, "</s>": 0, "<unk>": 1, "hello": 2, "wörld": 3, "日本": 4}
    )


# ------------------------------------------------------------------------------------------------ Vocabulary


def test_dict_literal_vocab_round_trip_with_shared_index(word_vocab_file):
    vocab = Vocabulary(word_vocab_file, unknown_label="<unk>", seq_postfix=[0], eos_label="</s>")
    assert vocab.num_labels == 5
    assert vocab.labels == ["<s>", "<unk>", "hello", "wörld", "日本"]
    assert vocab.eos_label_id == 0
    assert vocab.get_seq("hello  wörld\t日本 nope") == [2, 3, 4, 1, 0]
    assert vocab.get_seq_labels([2, 3, 4]) == "hello wörld 日本"
    assert vocab.get_seq_labels(vocab.get_seq("日本 hello")[:-1]) == "日本 hello"


def test_vocabulary_from_labels_and_to_id():
    vocab = Vocabulary.create_vocab_from_labels(["a", "b", "<unk>"], unknown_label="<unk>")
    assert (vocab.num_labels, vocab.vocab_file, vocab.unknown_label_id) == (3, None, 2)
    assert [vocab.to_id("b"), vocab.to_id("zz"), vocab.to_id(1), vocab.to_id(None, allow_none=True)] == [1, 2, 1, None]
    assert vocab.to_id(7, default=-1) == -1
    with pytest.raises(DatasetError, match=r"label index 7 is out of range for the vocabulary given by labels"):
        vocab.to_id(7)
    strict = Vocabulary.create_vocab_from_labels(["a"], unknown_label=None)
    with pytest.raises(DatasetError, match=r"label 'b' is not in the vocabulary given by labels and there is no unk"):
        strict.to_id("b")
    with pytest.raises(DatasetError, match=r"vocabulary labels must be unique, these repeat: \['a'\]"):
        Vocabulary.create_vocab_from_labels(["a", "b", "a"], unknown_label=None)


def test_pickle_and_line_and_gzip_vocab_files_agree(tmp_path):
    labels = ["a", "b", "UNK", "ü"]
    with open(tmp_path / "vocab.pkl", "wb") as f:
        pickle.dump({label: i for i, label in enumerate(labels)}, f)
    (tmp_path / "vocab.lines").write_text("\n".join(labels) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "vocab.txt.gz", "wt", encoding="utf-8") as f:
        f.write(repr({label: i for i, label in enumerate(labels)}))
    for name in ("vocab.pkl", "vocab.lines", "vocab.txt.gz"):
        vocab = Vocabulary(str(tmp_path / name))
        assert vocab.labels == labels, name
        assert vocab.get_seq("ü a x") == [3, 0, 2], name


def test_pickle_vocab_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"a": 0, "b": slice(1)}, f)
    with pytest.raises(DatasetError, match=r"evil.pkl.*refusing to load builtins.slice"):
        Vocabulary(str(path))


def test_missing_default_unknown_label_names_a_similar_label(word_vocab_file):
    with pytest.raises(DatasetError, match=r"unknown_label='UNK' is not in the vocab file .*did you mean '<unk>'\?"):
        Vocabulary(word_vocab_file)


def test_label_missing_without_unknown_label_is_an_error(word_vocab_file):
    vocab = Vocabulary(word_vocab_file, unknown_label=None)
    assert vocab.unknown_label_id is None
    with pytest.raises(
        DatasetError, match=r"label 'zebra' is not in the vocab file .*vocab.txt.*\(unknown_label=None\)"
    ):
        vocab.get_seq("hello zebra")
    assert vocab.label_to_id("zebra", default=-1) == -1


def test_bad_vocab_files(tmp_path):
    with pytest.raises(DatasetError, match=r"indices must cover 0..3, but 2 are unused \(first: \[1, 2\]\)"):
        Vocabulary(write_dict_vocab(tmp_path / "gaps", {"a": 0, "b": 3}), unknown_label=None)
    with pytest.raises(DatasetError, match=r"entries must be label \(str\) -> index \(int >= 0\), got 'a': 'x'"):
        Vocabulary(write_dict_vocab(tmp_path / "types", {"a": "x"}), unknown_label=None)
    (tmp_path / "broken").write_text("{'a': 0,", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken.*not a valid Python dict literal"):
        Vocabulary(str(tmp_path / "broken"))
    with pytest.raises(DatasetError, match=r"cannot read vocab file .*missing"):
        Vocabulary(str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match=r"has 2 labels, but num_labels=3 was given"):
        Vocabulary(labels=["a", "UNK"], num_labels=3)


def test_vocabulary_pickles(word_vocab_file):
    vocab = Vocabulary(word_vocab_file, unknown_label="<unk>")
    clone = pickle.loads(pickle.dumps(vocab))
    assert clone.get_seq("wörld x") == [3, 1]
    assert clone.labels == vocab.labels


# ------------------------------------------------------------------------------------------------ create_vocab


def test_create_vocab_chooses_the_class(tmp_path, word_vocab_file):
    codes = tmp_path / "codes"
    codes.write_text("#version: 0.2\nl o\n", encoding="utf-8")
    assert type(Vocabulary.create_vocab(vocab_file=word_vocab_file, unknown_label=None)) is Vocabulary
    bpe = Vocabulary.create_vocab(vocab_file=word_vocab_file, bpe_file=str(codes), unknown_label="<unk>")
    assert type(bpe) is BytePairEncoding
    chars = Vocabulary.create_vocab(**{"class": "CharacterTargets", "labels": ["a", "@"]})
    assert type(chars) is CharacterTargets
    assert chars.get_seq("ab") == [0, 1]
    assert type(Vocabulary.create_vocab(**{"class": Utf8ByteTargets})) is Utf8ByteTargets


def test_create_vocab_reports_bad_options(word_vocab_file):
    with pytest.raises(DatasetError, match=r"unknown class 'Bpe'; choose one of: Vocabulary, BytePairEncoding"):
        Vocabulary.create_vocab(**{"class": "Bpe"})
    with pytest.raises(DatasetError, match=r"unknown option\(s\) 'unkown_label'; valid options: .*unknown_label"):
        Vocabulary.create_vocab(vocab_file=word_vocab_file, unkown_label=None)
    with pytest.raises(DatasetError, match=r"BytePairEncoding: .*missing 1 required positional argument: 'vocab_file'"):
        Vocabulary.create_vocab(bpe_file="codes")


# ------------------------------------------------------------------------------------------------ BPE


@pytest.fixture
def bpe_codes(tmp_path):
    path = tmp_path / "bpe.codes"
    path.write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\nn e\nlo w\na a\n", encoding="utf-8")
    return str(path)


def test_bpe_merges_by_rank(tmp_path, bpe_codes):
    labels = ["UNK", "low", "low@@", "er", "ne@@", "w@@", "aa@@", "a", "x"]
    vocab = BytePairEncoding(write_dict_vocab(tmp_path / "v", {k: i for i, k in enumerate(labels)}), bpe_codes)
    assert vocab.bpe.segment_sentence("low lower newer aaa x") == [
        "low", "low@@", "er", "ne@@", "w@@", "er", "aa@@", "a", "x",
    ]  # fmt: skip
    assert vocab.get_seq("lower xy") == [2, 3, 0, 0]  # 'xy' gives 'x@@ y': neither is known


def test_bpe_splits_pieces_missing_from_the_vocab(tmp_path, bpe_codes):
    labels = ["UNK", "lo@@", "w@@", "er", "low"]
    vocab = BytePairEncoding(write_dict_vocab(tmp_path / "v", {k: i for i, k in enumerate(labels)}), bpe_codes)
    assert vocab.bpe.segment_sentence("lower low") == ["lo@@", "w@@", "er", "low"]
    assert vocab.get_seq_labels(vocab.get_seq("lower")) == "lo@@ w@@ er"


def test_bpe_version_0_1_uses_a_separate_end_of_word_symbol(tmp_path):
    codes = tmp_path / "codes"
    codes.write_text("l o\nlo w\nlow </w>\n", encoding="utf-8")
    vocab = BytePairEncoding(write_dict_vocab(tmp_path / "v", {"UNK": 0, "low": 1, "low@@": 2}), str(codes))
    assert vocab.bpe.segment_sentence("low lowlow") == ["low", "low@@", "low"]


def test_bpe_codes_errors(tmp_path, word_vocab_file):
    codes = tmp_path / "codes"
    codes.write_text("#version: 0.2\nl o\nbroken line here\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"codes', line 3: expected a merge 'left right', got 'broken line here'"):
        BytePairEncoding(word_vocab_file, str(codes), unknown_label="<unk>")


def test_sampling_bpe(tmp_path):
    labels = ["UNK", "a@@", "b@@", "ab@@", "a", "b", "ab", "abab"]
    vocab_file = write_dict_vocab(tmp_path / "v", {k: i for i, k in enumerate(labels)})
    greedy = SamplingBytePairEncoding(vocab_file, breadth_prob=0.0, unknown_label="UNK")
    assert greedy.get_seq("abab ab xy") == [7, 6, 0]
    sampling = SamplingBytePairEncoding(vocab_file, breadth_prob=0.7)
    seen = set()
    for seed in range(40):
        sampling.set_random_seed(seed)
        labels_seq = sampling.get_seq_labels(sampling.get_seq("abab"))
        assert labels_seq.replace("@@ ", "") == "abab"
        seen.add(labels_seq)
    assert {"abab", "ab@@ ab", "a@@ b@@ a@@ b"} <= seen
    sampling.set_random_seed(3)
    first = sampling.get_seq("abab abab abab")
    sampling.set_random_seed(3)
    assert sampling.get_seq("abab abab abab") == first
    with pytest.raises(DatasetError, match=r"word 'xy' cannot be built from the labels of the vocab file"):
        sampling.get_seq("xy")


# ------------------------------------------------------------------------------------------------ others


def test_character_targets_unicode(tmp_path):
    vocab_file = write_dict_vocab(tmp_path / "chars", {"@": 0, " ": 1, "h": 2, "ä": 3, "ß": 4, "😀": 5})
    vocab = CharacterTargets(vocab_file, seq_postfix=[0])
    assert vocab.get_seq("hä ß😀x") == [2, 3, 1, 4, 5, 0, 0]
    assert vocab.get_seq_labels([2, 3, 1, 5]) == "hä 😀"


def test_utf8_byte_targets_round_trip():
    vocab = Utf8ByteTargets()
    text = "añ€😀 日本"
    seq = vocab.get_seq(text)
    assert vocab.num_labels == 256
    assert seq[:3] == [0x61, 0xC3, 0xB1]
    assert len(seq) == len(text.encode("utf-8"))
    assert vocab.get_seq_labels(seq) == text
    assert vocab.get_seq_labels([0x61, 0xFF]) == "a\ufffd"


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    sentencepiece = pytest.importorskip("sentencepiece")
    directory = tmp_path_factory.mktemp("spm")
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(["the cat sat on the mat", "a dog sat on a log", "über grüße"] * 20), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "spm"), vocab_size=20, model_type="unigram", minloglevel=2
    )
    return str(directory / "spm.model")


def test_sentence_pieces_round_trip_and_pickle(spm_model):
    vocab = Vocabulary.create_vocab(model_file=spm_model)
    assert type(vocab) is SentencePieces
    assert vocab.num_labels == 20
    assert vocab.labels[vocab.unknown_label_id] == "<unk>"
    seq = vocab.get_seq("the cat sat on über")
    assert all(0 <= idx < 20 for idx in seq)
    assert vocab.get_seq_labels(seq) == "the cat sat on über"
    clone = pickle.loads(pickle.dumps(vocab))
    assert clone._sp is None
    assert clone.get_seq("the cat sat on über") == seq


def test_sentence_pieces_needs_a_model_file():
    with pytest.raises(DatasetError, match=r"SentencePieces: give 'model_file'"):
        SentencePieces()


def test_sentence_pieces_without_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(
        DatasetError, match=r"SentencePieces vocabularies need the 'sentencepiece' package: pip install"
    ):
        SentencePieces(model_file=str(tmp_path / "spm.model"))
