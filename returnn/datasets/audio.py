"""Audio datasets: :class:`OggZipDataset`, RETURNN's zip format for speech corpora.

A corpus ``<name>.zip`` holds ``<name>.txt`` and the audio files. The txt is a Python list literal of dicts,
one per sequence::

    [{"text": "hello world", "duration": 2.3, "file": "seq0.ogg", "seq_name": "corpus/rec/seg0"}, ...]

``duration`` (seconds) orders the sequences for the length-based orderings and need not be exact. The sequence tag is
``seq_name``, else ``file``. Audio files are at ``<name>/<file>`` in the zip (``<file>`` with
``zip_audio_files_have_name_as_prefix=False``), in any format libsndfile reads (ogg, wav, flac ...); reading them
needs the ``soundfile`` package. With ``audio=None`` no audio is read, and entries need no ``file`` (text-only).

The dataset reads the txt files on first use. Zip files are opened lazily in each process (never pickled), and
reopened after a fork, because a shared file offset would mix up the reads of two processes.
"""

from __future__ import annotations

import ast
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from returnn.datasets.basic import STRING_DTYPE, DatasetSeq
from returnn.datasets.cached2 import CachedDataset2
from returnn.datasets.util.epoch_wise_filter import EpochWiseFilter, EpochWiseFiltered
from returnn.datasets.util.feature_extraction import ExtractAudioFeatures, read_audio
from returnn.datasets.util.files import read_file_bytes
from returnn.datasets.util.seq_lists import read_tag_list
from returnn.datasets.util.vocabulary import Vocabulary
from returnn.errors import DatasetError

__all__ = ["OggZipDataset"]

logger = logging.getLogger(__name__)


@dataclass
class _Source:
    """One corpus part: a zip (maybe with its txt given separately) or a txt with audio files next to it."""

    name: str
    zip_path: str | None = None
    txt_path: str | None = None
    _zip: zipfile.ZipFile | None = field(default=None, repr=False)
    _zip_pid: int | None = field(default=None, repr=False)

    def describe(self) -> str:
        return repr(self.zip_path or self.txt_path)

    def zip_file(self) -> zipfile.ZipFile:
        assert self.zip_path is not None
        if self._zip is None or self._zip_pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.zip_path)
            except (OSError, zipfile.BadZipFile) as exc:
                raise DatasetError(f"cannot open zip file {self.zip_path!r}: {exc}") from exc
            self._zip_pid = os.getpid()
        return self._zip

    def read_txt(self) -> bytes:
        if self.txt_path is not None:
            return read_file_bytes(self.txt_path, "corpus txt file")
        member = f"{self.name}.txt"
        zip_file = self.zip_file()
        try:
            return zip_file.read(member)
        except KeyError:
            names = zip_file.namelist()
            raise DatasetError(
                f"zip file {self.zip_path!r} has no {member!r}, which must list its sequences (found {len(names)} "
                f"entries, e.g. {names[:3]}); or give the list as a separate '{self.name}.txt.gz' in 'path'"
            ) from None

    def read_member(self, member: str) -> bytes:
        if self.zip_path is None:
            assert self.txt_path is not None
            filename = os.path.join(os.path.dirname(self.txt_path), member)
            try:
                with open(filename, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise DatasetError(f"cannot read audio file {filename!r}: {exc}") from exc
        try:
            return self.zip_file().read(member)
        except KeyError:
            raise DatasetError(f"zip file {self.zip_path!r} has no file {member!r}") from None


def _make_sources(path: str | Sequence[str], use_cache_manager: bool) -> list[_Source]:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise DatasetError("OggZipDataset: 'path' is empty; give the corpus zip file(s)")
    zips: dict[str, str] = {}
    txts: dict[str, str] = {}
    for item in map(os.fspath, paths):
        base = os.path.basename(item)
        if use_cache_manager:
            from returnn.util.basic import cf

            item = cf(item)
        if base.endswith(".zip"):
            zips[base[: -len(".zip")]] = item
        elif base.endswith((".txt", ".txt.gz")):
            txts[base[: -len(".txt")] if base.endswith(".txt") else base[: -len(".txt.gz")]] = item
        else:
            raise DatasetError(f"OggZipDataset: path {item!r} is neither a .zip nor a .txt / .txt.gz file")
    sources = [_Source(name, zip_path=zip_path, txt_path=txts.pop(name, None)) for name, zip_path in zips.items()]
    return sources + [_Source(name, txt_path=txt_path) for name, txt_path in txts.items()]


@dataclass
class _Entries:
    """The sequences of the corpus, column-wise (compact for corpora of 100k+ sequences)."""

    texts: list[str] = field(default_factory=list)
    files: list[str | None] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)


class OggZipDataset(EpochWiseFiltered, CachedDataset2):
    """Speech corpora in RETURNN's zip format (see module docs).

    Data keys: ``data`` (audio features ``[T, D]`` float32, if ``audio`` is given), ``classes`` (label indices, if
    ``targets`` is given), ``orth`` (the text's UTF-8 bytes, uint8) and ``raw`` (the text as a string).

    :param path: a zip file, or a list of zip files and ``<name>.txt(.gz)`` files; a txt replaces the list inside
        the zip of the same name, or stands alone with the audio files in its directory
    :param audio: :class:`ExtractAudioFeatures` options (``{}`` for the defaults), or None for no audio
    :param targets: :class:`Vocabulary` options (see :meth:`Vocabulary.create_vocab`) or a Vocabulary, or None
    :param targets_post_process: a function applied to the text before the vocabulary splits it
    :param use_cache_manager: copy the files to the local cache first (:func:`returnn.util.basic.cf`)
    :param segment_file: a text file (maybe gzipped) of sequence tags, one per line: only these
    :param zip_audio_files_have_name_as_prefix: audio files are at ``<name>/<file>`` in the zip
    :param epoch_wise_filter: see :mod:`returnn.datasets.util.epoch_wise_filter`; lengths are ``duration * 100``
    """

    def __init__(
        self,
        path: str | Sequence[str],
        audio: dict[str, Any] | None,
        targets: dict[str, Any] | Vocabulary | None,
        targets_post_process: Callable[[str], str] | None = None,
        use_cache_manager: bool = False,
        segment_file: str | None = None,
        zip_audio_files_have_name_as_prefix: bool = True,
        epoch_wise_filter: dict[Any, Any] | EpochWiseFilter | None = None,
        **kwargs: Any,
    ):
        self._sources = _make_sources(path, use_cache_manager)
        kwargs.setdefault("name", self._sources[0].name)
        super().__init__(**kwargs)
        self.path = path
        self.segment_file = segment_file
        self.zip_audio_files_have_name_as_prefix = zip_audio_files_have_name_as_prefix
        if targets_post_process is not None and not callable(targets_post_process):
            raise DatasetError(
                f"{self}: targets_post_process must be a function str -> str, got {targets_post_process!r}"
            )
        self.targets_post_process = targets_post_process
        self.feature_extractor = (
            ExtractAudioFeatures.from_options(audio, f"{self}: 'audio' options") if audio is not None else None
        )
        self.targets = None if targets is None else Vocabulary.from_option(targets, f"{self} targets")
        self.epoch_wise_filter = EpochWiseFilter.from_option(epoch_wise_filter, f"{self} epoch_wise_filter")
        self.num_outputs = {"orth": (256, 1), "raw": (0, 0)}
        self.labels = {"orth": [chr(i) for i in range(256)]}
        if self.feature_extractor is not None:
            self.num_inputs = self.feature_extractor.get_feature_dimension()
            self.num_outputs["data"] = (self.num_inputs, 2)
        if self.targets is not None:
            self.num_outputs["classes"] = (self.targets.num_labels, 1)
            self.labels["classes"] = self.targets.labels
        self._entries: _Entries | None = None

    # ---------------------------------------------------------------- corpus

    def _load_entries(self) -> _Entries:
        if self._entries is None:
            allowed = set(read_tag_list(self.segment_file, f"{self} segment_file")) if self.segment_file else None
            entries = _Entries()
            for source_idx, source in enumerate(self._sources):
                for i, info in enumerate(_parse_txt(source)):
                    tag = self._check_entry(source, i, info)
                    if allowed is not None and tag not in allowed:
                        continue
                    entries.texts.append(info["text"])
                    entries.files.append(info.get("file"))
                    entries.tags.append(tag)
                    entries.durations.append(float(info["duration"]))
                    entries.sources.append(source_idx)
            if not entries.tags:
                filtered = f" after segment_file {self.segment_file!r}" if allowed is not None else ""
                raise DatasetError(
                    f"{self}: no sequences in {', '.join(s.describe() for s in self._sources)}{filtered}"
                )
            logger.info(f"{self}: {len(entries.tags)} sequences")
            self._entries = entries
        return self._entries

    def _check_entry(self, source: _Source, i: int, info: Any) -> str:
        """Validate one txt entry; return its tag."""
        where = f"{self}: {source.describe()}, {source.name}.txt entry {i}"
        if not isinstance(info, dict):
            raise DatasetError(f"{where}: expected a dict with text, duration, file; got {info!r:.100}")
        if not isinstance(info.get("text"), str):
            raise DatasetError(f"{where}: 'text' must be a string, got {info.get('text')!r:.100}")
        if isinstance(info.get("duration"), bool) or not isinstance(info.get("duration"), (int, float)):
            raise DatasetError(f"{where}: 'duration' (seconds) must be a number, got {info.get('duration')!r}")
        if "file" in info and not isinstance(info["file"], str):
            raise DatasetError(f"{where}: 'file' must be a string, got {info['file']!r}")
        if "file" not in info and self.feature_extractor is not None:
            raise DatasetError(f"{where}: no 'file', but audio features are requested (set audio=None for text only)")
        tag = info.get("seq_name", info.get("file"))
        if not isinstance(tag, str):
            raise DatasetError(f"{where}: needs 'seq_name' or 'file' as its sequence tag")
        return tag

    def get_total_num_seqs(self) -> int:
        return len(self._load_entries().tags)

    def get_all_tags(self) -> list[str]:
        return self._load_entries().tags

    def supports_sharding(self) -> bool:
        return True

    def _get_seq_len_for_ordering(self) -> Callable[[int], int]:
        durations = self._load_entries().durations
        return lambda corpus_idx: int(durations[corpus_idx] * 100)

    # ---------------------------------------------------------------- sequences

    def have_get_corpus_seq(self) -> bool:
        return True

    def get_corpus_seq(self, corpus_idx: int) -> DatasetSeq:
        entries = self._load_entries()
        tag = entries.tags[corpus_idx]
        text = entries.texts[corpus_idx]
        self._seed_for(corpus_idx)
        features: dict[str, np.ndarray] = {
            "orth": np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy(),
            "raw": np.array(text),
        }
        if self.targets is not None:
            target_text = self.targets_post_process(text) if self.targets_post_process else text
            try:
                features["classes"] = np.array(self.targets.get_seq(target_text), dtype=np.int32)
            except DatasetError as exc:
                raise DatasetError(f"{self}: sequence {tag!r}: {exc}") from exc
        if self.feature_extractor is not None:
            features["data"] = self._audio_features(corpus_idx)
        return DatasetSeq(corpus_idx, features, seq_tag=tag)

    def _seed_for(self, corpus_idx: int) -> None:
        """Seed the randomness of this sequence (perturbation, sampled vocabularies) from the epoch and the sequence,
        so that it does not depend on how the epoch is spread over DataLoader workers."""
        state = self._seq_random_seed(corpus_idx)
        if self.feature_extractor is not None:
            self.feature_extractor.set_random_seed(state)
        if self.targets is not None:
            self.targets.set_random_seed(state)

    def _audio_features(self, corpus_idx: int) -> np.ndarray:
        assert self.feature_extractor is not None
        entries = self._load_entries()
        source = self._sources[entries.sources[corpus_idx]]
        file = entries.files[corpus_idx]
        assert file is not None
        member = f"{source.name}/{file}" if self.zip_audio_files_have_name_as_prefix else file
        tag = entries.tags[corpus_idx]
        try:
            data = source.read_member(member)
        except DatasetError as exc:
            raise DatasetError(f"{self}: sequence {tag!r}: {exc}") from None
        audio, sample_rate = read_audio(data, f"{member!r} in {source.describe()} (sequence {tag!r})")
        return self.feature_extractor.get_audio_features(audio, sample_rate)

    # ---------------------------------------------------------------- data description

    def get_data_keys(self) -> list[str]:
        keys = ["data"] if self.feature_extractor is not None else []
        return keys + (["classes"] if self.targets is not None else []) + ["orth", "raw"]

    def get_data_dtype(self, key: str) -> str:
        return {"data": "float32", "classes": "int32", "orth": "uint8", "raw": STRING_DTYPE}[key]

    def is_data_sparse(self, key: str) -> bool:
        return key == "classes"

    def serialize_data(self, key: str, data: np.ndarray) -> str:
        if key == "orth":  # UTF-8 bytes: one label per byte would split multi-byte characters
            return data.tobytes().decode("utf-8", errors="replace")
        return super().serialize_data(key, data)

    def get_data_shape(self, key: str) -> list[int]:
        if key == "data" and self.feature_extractor is not None:
            return [self.num_inputs]
        return []


def _parse_txt(source: _Source) -> list[Any]:
    raw = source.read_txt()
    where = f"{source.describe()}: {source.name}.txt" if source.zip_path else source.describe()
    try:
        entries = ast.literal_eval(raw.decode("utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where} is not a Python list literal of dicts (text, duration, file): {exc}") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{where}: expected a list of dicts (text, duration, file), got {type(entries).__name__}")
    return entries
