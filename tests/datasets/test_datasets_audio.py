"""Tests for OggZipDataset (returnn.datasets.audio) on zips written in the tests."""

from __future__ import annotations

import gzip
import io
import pickle
import sys
import zipfile

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.audio import OggZipDataset
from returnn.datasets.util.feature_extraction import ExtractAudioFeatures
from returnn.errors import DatasetError

SAMPLE_RATE = 8000
ENTRIES = [
    {"text": "ab ba", "duration": 0.3, "file": "a.wav", "seq_name": "corpus/a"},
    {"text": "äb", "duration": 0.1, "file": "b.flac"},
    {"text": "a", "duration": 0.2, "file": "c.ogg", "seq_name": "corpus/c"},
]


def tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode_audio(samples: np.ndarray, file: str) -> bytes:
    soundfile = pytest.importorskip("soundfile")
    buffer = io.BytesIO()
    fmt = file.rsplit(".", 1)[1].upper()
    soundfile.write(buffer, samples, SAMPLE_RATE, format=fmt, subtype="FLOAT" if fmt == "WAV" else None)
    return buffer.getvalue()


def make_zip(
    tmp_path, entries=ENTRIES, name="corpus", audio: dict[str, bytes] | None = None, prefix=True, txt: str | None = None
) -> str:
    path = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}.txt", repr(entries) if txt is None else txt)
        for file, data in (audio or {}).items():
            zf.writestr(f"{name}/{file}" if prefix else file, data)
    return str(path)


def make_audio(entries=ENTRIES) -> dict[str, bytes]:
    return {e["file"]: encode_audio(tone(e["duration"], 440 * (i + 1)), e["file"]) for i, e in enumerate(entries)}


@pytest.fixture
def char_targets(tmp_path):
    vocab = tmp_path / "chars.txt"
    vocab.write_text(repr({"@": 0, " ": 1, "a": 2, "b": 3, "ä": 4}), encoding="utf-8")
    return {"class": "CharacterTargets", "vocab_file": str(vocab)}


@pytest.fixture
def epoch_seqs(read_epoch):
    """``epoch_seqs(dataset, keys, epoch=1)``: per sequence (tag, data of each key)."""

    def epoch_seqs(dataset, keys, epoch=1) -> list[tuple]:
        return [(tag, *[data[key] for key in keys]) for tag, data in read_epoch(dataset, epoch, keys)]

    return epoch_seqs


# ------------------------------------------------------------------------------------------------ text only


def test_text_only_without_any_audio_package(tmp_path, char_targets, monkeypatch, epoch_seqs):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # importing soundfile would now fail
    dataset = OggZipDataset(path=make_zip(tmp_path), audio=None, targets=char_targets)
    assert dataset.name == "corpus"
    assert dataset.get_data_keys() == ["classes", "orth", "raw"]
    assert dataset.num_outputs["classes"] == (5, 1)
    seqs = epoch_seqs(dataset, ["classes", "orth", "raw"])
    assert [(tag, classes.tolist()) for tag, classes, _, _ in seqs] == [
        ("corpus/a", [2, 3, 1, 3, 2]),
        ("b.flac", [4, 3]),
        ("corpus/c", [2]),
    ]
    _, _, orth, raw = seqs[1]
    assert orth.dtype == np.uint8 and orth.tobytes() == "äb".encode()
    assert raw.shape == () and str(raw) == "äb"
    assert dataset.serialize_data("orth", orth) == "äb"


def test_entries_without_file_and_targets_post_process(tmp_path, char_targets, epoch_seqs):
    entries = [{"text": "AB", "duration": 1.0, "seq_name": "s1"}]
    dataset = OggZipDataset(path=make_zip(tmp_path, entries), audio=None, targets=char_targets,
                            targets_post_process=str.lower)  # fmt: skip
    assert [(tag, c.tolist(), str(raw)) for tag, c, raw in epoch_seqs(dataset, ["classes", "raw"])] == [
        ("s1", [2, 3], "AB")
    ]


def test_orderings_segment_file_subset_and_separate_txt(tmp_path, epoch_seqs):
    zip_path = make_zip(tmp_path, txt="[]")  # the separate txt below replaces this empty list
    with gzip.open(tmp_path / "corpus.txt.gz", "wt", encoding="utf-8") as f:
        f.write(repr(ENTRIES))
    paths = [zip_path, str(tmp_path / "corpus.txt.gz")]
    ordered = OggZipDataset(path=paths, audio=None, targets=None, seq_ordering="sorted_reverse")
    assert [seq[0] for seq in epoch_seqs(ordered, [])] == ["corpus/a", "corpus/c", "b.flac"]
    with gzip.open(tmp_path / "segments.gz", "wt") as f:
        f.write("corpus/c\nb.flac\n")
    filtered = OggZipDataset(path=paths, audio=None, targets=None, segment_file=str(tmp_path / "segments.gz"))
    assert [seq[0] for seq in epoch_seqs(filtered, [])] == ["b.flac", "corpus/c"]
    subset = init_dataset({"class": "OggZipDataset", "path": paths, "audio": None, "targets": None,
                           "fixed_random_subset": 2})  # fmt: skip
    assert subset.get_total_num_seqs() == 3
    assert len(epoch_seqs(subset, [])) == 2


def test_epoch_wise_filter_keeps_short_sequences_in_early_epochs(tmp_path, epoch_seqs):
    entries = [{"text": "x", "duration": d, "seq_name": f"s{i}"} for i, d in enumerate([3.0, 1.0, 10.0, 2.0])]
    dataset = OggZipDataset(
        path=make_zip(tmp_path, entries), audio=None, targets=None, epoch_wise_filter={(1, 2): {"max_mean_len": 200}}
    )
    assert [seq[0] for seq in epoch_seqs(dataset, [], epoch=2)] == ["s0", "s1", "s3"]
    assert [seq[0] for seq in epoch_seqs(dataset, [], epoch=3)] == ["s0", "s1", "s2", "s3"]
    # The filter sees the whole epoch before it is sharded: the shards together keep the same sequences.
    shards = []
    for shard_index in range(2):
        dataset.set_sharding(shard_index, 2)
        shards.append([seq[0] for seq in epoch_seqs(dataset, [], epoch=2)])
    assert shards == [["s0", "s3"], ["s1"]]
    with pytest.raises(
        DatasetError,
        match=r"\(OggZipDataset\) epoch_wise_filter\[\(1, 2\)\]: unknown option\(s\) \['max_len'\]; supported",
    ):
        OggZipDataset(path=make_zip(tmp_path, entries), audio=None, targets=None,
                      epoch_wise_filter={(1, 2): {"max_len": 5}})  # fmt: skip


# ------------------------------------------------------------------------------------------------ audio


def test_raw_audio_from_wav_flac_ogg(tmp_path, char_targets, epoch_seqs):
    audio = make_audio()
    dataset = OggZipDataset(
        path=make_zip(tmp_path, audio=audio), audio={"features": "raw", "peak_normalization": False},
        targets=char_targets,
    )  # fmt: skip
    assert dataset.get_data_keys() == ["data", "classes", "orth", "raw"]
    assert dataset.num_outputs["data"] == (1, 2)
    seqs = epoch_seqs(dataset, ["data"])
    for (tag, data), entry, i in zip(seqs, ENTRIES, range(3)):
        expected = tone(entry["duration"], 440 * (i + 1))
        assert data.dtype == np.float32 and data.shape == (len(expected), 1), tag
        np.testing.assert_allclose(
            data[:, 0], expected, atol={"wav": 0, "flac": 1e-4, "ogg": 0.05}[entry["file"].rsplit(".", 1)[1]]
        )


def test_mfcc_features_and_no_name_prefix(tmp_path, epoch_seqs):
    entries = ENTRIES[:1]
    path = make_zip(tmp_path, entries, audio=make_audio(entries), prefix=False)
    dataset = OggZipDataset(path=path, audio={"num_feature_filters": 13}, targets=None,
                            zip_audio_files_have_name_as_prefix=False)  # fmt: skip
    [(tag, data)] = epoch_seqs(dataset, ["data"])
    expected = ExtractAudioFeatures(num_feature_filters=13).get_audio_features(tone(0.3, 440), SAMPLE_RATE)
    assert data.shape == (1 + 2400 // 80, 13)
    np.testing.assert_allclose(data, expected, rtol=1e-4, atol=1e-4)


def add_noise(*, audio, sample_rate, random_state):
    return audio + random_state.uniform(-0.1, 0.1, audio.shape).astype(np.float32)


def test_perturbation_is_seeded_per_sequence_and_survives_pickling_and_sharding(tmp_path, epoch_seqs):
    path = make_zip(tmp_path, audio=make_audio())
    opts = {"path": path, "audio": {"features": "raw", "pre_process": add_noise}, "targets": None}
    dataset = OggZipDataset(**opts)
    first = {tag: data for tag, data in epoch_seqs(dataset, ["data"])}
    assert all(np.array_equal(first[tag], data) for tag, data in epoch_seqs(dataset, ["data"]))
    assert not np.array_equal(first["corpus/a"], epoch_seqs(dataset, ["data"], epoch=2)[0][1])
    shards = []
    for shard in range(2):
        sharded = OggZipDataset(**opts)
        sharded.set_sharding(shard, 2)
        shards += epoch_seqs(pickle.loads(pickle.dumps(sharded)), ["data"])
    assert sorted(tag for tag, _ in shards) == sorted(first)
    assert all(np.array_equal(first[tag], data) for tag, data in shards)


# ------------------------------------------------------------------------------------------------ bad input


def test_zip_without_txt(tmp_path):
    path = tmp_path / "corpus.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("other.txt", "[]")
    dataset = OggZipDataset(path=str(path), audio=None, targets=None)
    with pytest.raises(DatasetError, match=r"zip file '.*corpus.zip' has no 'corpus.txt', which must list"):
        dataset.init_seq_order(epoch=1)


def test_malformed_txt(tmp_path):
    bad_literal = OggZipDataset(path=make_zip(tmp_path, txt="[{'text': 'a',"), audio=None, targets=None)
    with pytest.raises(DatasetError, match=r"corpus.zip': corpus.txt is not a Python list literal of dicts"):
        bad_literal.get_total_num_seqs()
    no_duration = OggZipDataset(path=make_zip(tmp_path, [{"text": "a", "file": "a.wav"}]), audio=None, targets=None)
    with pytest.raises(DatasetError, match=r"corpus.txt entry 0: 'duration' \(seconds\) must be a number, got None"):
        no_duration.get_total_num_seqs()
    no_file = OggZipDataset(path=make_zip(tmp_path, [{"text": "a", "duration": 1.0, "seq_name": "s"}]), audio={},
                            targets=None)  # fmt: skip
    with pytest.raises(DatasetError, match=r"entry 0: no 'file', but audio features are requested"):
        no_file.get_total_num_seqs()


def test_unreadable_and_missing_audio_name_the_zip_and_the_file(tmp_path):
    pytest.importorskip("soundfile")
    path = make_zip(tmp_path, ENTRIES[:1], audio={"a.wav": b"RIFF but not really audio"})
    dataset = OggZipDataset(path=path, audio={"features": "raw"}, targets=None)
    dataset.init_seq_order(epoch=1)
    with pytest.raises(
        DatasetError, match=r"cannot decode audio file 'corpus/a.wav' in '.*corpus.zip' \(sequence 'corpus/a'\)"
    ):
        dataset.get_data(0, "data")
    missing = OggZipDataset(path=make_zip(tmp_path, ENTRIES[:1]), audio={"features": "raw"}, targets=None)
    missing.init_seq_order(epoch=1)
    with pytest.raises(DatasetError, match=r"sequence 'corpus/a': zip file '.*corpus.zip' has no file 'corpus/a.wav'"):
        missing.get_data(0, "data")


def test_label_missing_from_the_targets(tmp_path, epoch_seqs):
    vocab = tmp_path / "words.txt"
    vocab.write_text(repr({"<unk>": 0, "ab": 1, "ba": 2, "a": 3}), encoding="utf-8")
    strict = OggZipDataset(
        path=make_zip(tmp_path), audio=None, targets={"vocab_file": str(vocab), "unknown_label": None}
    )
    strict.init_seq_order(epoch=1)
    with pytest.raises(DatasetError, match=r"sequence 'b.flac': label 'äb' is not in the vocab file"):
        strict.get_data(1, "classes")
    lenient = OggZipDataset(
        path=make_zip(tmp_path), audio=None, targets={"vocab_file": str(vocab), "unknown_label": "<unk>"}
    )
    assert [c.tolist() for _, c in epoch_seqs(lenient, ["classes"])] == [[1, 2], [0], [3]]


def test_bad_options(tmp_path):
    with pytest.raises(DatasetError, match=r"path 'corpus.tar' is neither a .zip nor a .txt / .txt.gz file"):
        OggZipDataset(path="corpus.tar", audio=None, targets=None)
    with pytest.raises(DatasetError, match=r"'audio' options: .*'window'; valid options: window_len"):
        OggZipDataset(path=make_zip(tmp_path), audio={"window": 0.02}, targets=None)
    (tmp_path / "vocab.py").write_text(repr({"a": 0}))
    with pytest.raises(
        DatasetError,
        match=r"dataset 'corpus' \(OggZipDataset\) targets: unknown_label='UNK' is not in the vocab file '.*vocab.py'",
    ):
        OggZipDataset(path=make_zip(tmp_path), audio=None, targets={"vocab_file": str(tmp_path / "vocab.py")})
    with pytest.raises(DatasetError, match=r"missing required option 'targets'"):
        init_dataset({"class": "OggZipDataset", "path": make_zip(tmp_path), "audio": None})
