"""HDF files in RETURNN's format: :class:`HDFDataset`, and the writers :class:`SimpleHDFWriter` and
:class:`HDFDatasetWriter` (defined in :mod:`returnn.datasets.util.hdf_writer`; the layout is described there).

Reading is lazy. At construction only the structure of each file is read (names, shapes, dtypes, attributes),
not the data. At first use, the sequence lengths and tags are read, once; after that, every ``get_data`` is one
h5py read of one sequence's slice. Memory therefore grows with the number of sequences (a few bytes each), not
with the size of the data, and a file larger than RAM trains.

h5py handles are opened on first use in each process and are never pickled: a DataLoader worker rebuilds the
dataset from its constructor arguments and opens the files itself.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from returnn.datasets.basic import STRING_DTYPE, Dataset, DatasetSeq
from returnn.datasets.util.hdf_writer import HDFDatasetWriter, SimpleHDFWriter
from returnn.errors import DatasetError
from returnn.log import V4

if TYPE_CHECKING:
    import h5py

__all__ = ["HDFDataset", "SimpleHDFWriter", "HDFDatasetWriter"]

logger = logging.getLogger(__name__)


class _KeyInfo(NamedTuple):
    """Where and what one data key is in one file."""

    path: str  # "inputs" or "targets/data/<key>"
    column: int  # column in seqLengths
    dim: int
    ndim: int  # RETURNN's ndim: axes including time (1 for sparse labels)
    dtype: str
    shape: tuple[int, ...]  # one frame's shape
    sparse: bool

    def same_kind(self, other: _KeyInfo) -> bool:
        return (self.dim, self.dtype, self.shape, self.sparse) == (other.dim, other.dtype, other.shape, other.sparse)


def _decode(raw: bytes | str) -> str:
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return text.split("\0", 1)[0] if "\0" in text else text


class _HDFFile:
    """One HDF file: its structure (read at construction), then lazily its lengths, tags and h5py handle."""

    def __init__(self, filename: str, owner: str):
        self.filename = filename
        self.owner = owner  # the dataset, for error messages
        self.keys: dict[str, _KeyInfo] = {}
        self.labels: dict[str, list[str]] = {}
        # Lazy, per process: the h5py handle, per key (h5py dataset, seqLengths column, is string), the start of
        # each sequence per seqLengths column ([num_seqs + 1, columns]), and the raw tags.
        self._handle: h5py.File | None = None
        self._fork_hook = False
        self._readers: dict[str, tuple[h5py.Dataset, int, bool]] = {}
        self._offsets: np.ndarray | None = None
        self._tags: np.ndarray | None = None
        with self._open_for_inspection() as f:
            self._inspect(f)

    def _error(self, what: str) -> DatasetError:
        return DatasetError(f"{self.owner}: HDF file {self.filename!r} {what}")

    def _open_for_inspection(self) -> h5py.File:
        import h5py

        if not os.path.exists(self.filename):
            raise self._error("does not exist; fix the path in the dataset's 'files'")
        try:
            return h5py.File(self.filename, "r")
        except OSError as exc:
            raise self._error(f"cannot be opened as HDF5 ({exc}); is it an HDF file, and complete?") from exc

    # ------------------------------------------------------------------ structure

    def _inspect(self, f: h5py.File) -> None:
        required = ["seqLengths", "seqTags"]
        missing = [name for name in required if name not in f]
        if "inputs" not in f and "targets/data" not in f:
            missing.append("'inputs' or 'targets/data'")
        if missing:
            hint = (
                "; it looks like a NextGen/stream HDF file (use StreamHDFDataset)"
                if "streams" in f
                else "; write HDF datasets with SimpleHDFWriter or tools/hdf_dump.py"
            )
            raise self._error(f"lacks {', '.join(missing)}, which RETURNN's HDF format requires{hint}")
        seq_lengths, seq_tags = f["seqLengths"], f["seqTags"]
        self.num_seqs = int(seq_lengths.shape[0])
        if seq_lengths.ndim not in (1, 2) or seq_tags.shape != (self.num_seqs,):
            raise self._error(
                f"is inconsistent: seqLengths has shape {seq_lengths.shape} and seqTags {seq_tags.shape}; "
                "expected [num_seqs, columns] and [num_seqs]"
            )
        self.lengths_1d = seq_lengths.ndim == 1
        has_inputs = "inputs" in f
        target_columns = self._target_columns(f)
        num_columns = int(has_inputs) + len(target_columns)
        if not self.lengths_1d and seq_lengths.shape[1] < max(num_columns, 1):
            raise self._error(
                f"has {seq_lengths.shape[1]} seqLengths columns, but needs {num_columns} "
                f"(inputs: {has_inputs}, targets: {sorted(target_columns)})"
            )
        if has_inputs and "data" in target_columns:
            raise self._error("has both 'inputs' and 'targets/data/data'; both would be data key 'data'")
        if has_inputs:
            self.keys["data"] = self._inputs_info(f)
            self._read_labels(f, "labels", "data")
        for key, column in target_columns.items():
            if key in f["targets/data"]:
                self.keys[key] = self._target_info(f, key, int(has_inputs) + column)
                self._read_labels(f, f"targets/labels/{key}", key)
        if not self.keys:
            raise self._error("holds no data: 'targets/data' is empty and there are no 'inputs'")

    @staticmethod
    def _target_columns(f: h5py.File) -> dict[str, int]:
        """Target keys by their seqLengths column (after inputs): sorted names of data and size entries."""
        if "targets/data" not in f:
            return {}
        names = set(f["targets/data"].keys())
        if "targets/size" in f:
            names |= set(f["targets/size"].attrs.keys())
        return {key: column for column, key in enumerate(sorted(names))}

    def _inputs_info(self, f: h5py.File) -> _KeyInfo:
        inputs = f["inputs"]
        dtype = _dtype_name(inputs.dtype)
        sparse = inputs.ndim == 1 and inputs.dtype.kind in "iu"
        if inputs.ndim == 1:
            if "inputPattSize" not in f.attrs and sparse:
                raise self._error(
                    "has sparse 1-d 'inputs' but no root attribute 'inputPattSize' (the number of classes); "
                    "set it, e.g. with h5py: f.attrs['inputPattSize'] = num_classes"
                )
            dim = int(f.attrs["inputPattSize"]) if sparse else 1
        else:
            dim = int(inputs.shape[-1])
        return _KeyInfo("inputs", 0, dim, inputs.ndim, dtype, tuple(inputs.shape[1:]), sparse)

    def _target_info(self, f: h5py.File, key: str, column: int) -> _KeyInfo:
        data = f["targets/data"][key]
        dim = int(data.shape[-1]) if data.ndim >= 2 else 1
        ndim = data.ndim
        size = f["targets/size"].attrs.get(key) if "targets/size" in f else None
        if size is not None:
            size = np.asarray(size).reshape(-1)
            if size.shape[0] not in (1, 2):
                raise self._error(f"has targets/size attribute {key!r} = {size.tolist()}; expected dim or [dim, ndim]")
            dim = int(size[0])
            ndim = int(size[1]) if size.shape[0] == 2 else ndim
        sparse = data.ndim == 1 and data.dtype.kind in "iu"
        return _KeyInfo(
            f"targets/data/{key}", column, dim, ndim, _dtype_name(data.dtype), tuple(data.shape[1:]), sparse
        )

    def _read_labels(self, f: h5py.File, path: str, key: str) -> None:
        if path not in f or f[path].ndim != 1 or f[path].shape[0] == 0:
            return
        labels = [_decode(raw) for raw in f[path][...].tolist()]
        # RETURNN's writers put a placeholder ["dummy-label"] where a key has no labels: only a full set is real.
        if len(labels) == self.keys[key].dim and labels != ["dummy-label"]:
            self.labels[key] = labels

    # ------------------------------------------------------------------ lazy state

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_handle=None, _readers={}, _offsets=None, _tags=None, _fork_hook=False)
        return state

    def _open(self) -> h5py.File:
        import h5py

        try:
            self._handle = h5py.File(self.filename, "r")
        except OSError as exc:
            raise self._error(f"cannot be opened any more ({exc})") from exc
        if not self._fork_hook:
            # A forked child (DataLoader workers with the "fork" context) must not share the parent's HDF5
            # handles; it opens its own on first use.
            os.register_at_fork(after_in_child=functools.partial(_forget_handle_of, weakref.ref(self)))
            self._fork_hook = True
        return self._handle

    def _make_reader(self, key: str) -> tuple[h5py.Dataset, int, bool]:
        """The h5py dataset, seqLengths column and string flag of a key (kept for the next reads)."""
        info = self.keys.get(key)
        if info is None:
            raise DatasetError(f"{self.owner}: unknown data key {key!r}; the HDF files have {sorted(self.keys)}")
        if self._offsets is None:
            self._offsets = self._load_offsets()
        handle = self._handle or self._open()
        reader = self._readers[key] = (handle[info.path], info.column, info.dtype == STRING_DTYPE)
        return reader

    def _load_offsets(self) -> np.ndarray:
        handle = self._handle or self._open()
        lengths = handle["seqLengths"][...].astype(np.int64)
        if self.lengths_1d:
            lengths = np.repeat(lengths[:, None], 1 + max(info.column for info in self.keys.values()), axis=1)
        offsets = np.zeros((lengths.shape[0] + 1, lengths.shape[1]), dtype=np.int64)
        np.cumsum(lengths, axis=0, out=offsets[1:])
        for key, info in self.keys.items():
            available = handle[info.path].shape[0]
            if offsets[-1, info.column] > available:
                raise self._error(
                    f"is inconsistent: seqLengths sums to {offsets[-1, info.column]} frames for key {key!r}, but "
                    f"{info.path!r} holds only {available}; the file is truncated or was written incompletely"
                )
        return offsets

    @property
    def tags(self) -> np.ndarray:
        """All sequence tags of the file (raw, as stored), read once."""
        if self._tags is None:
            self._tags = (self._handle or self._open())["seqTags"][...]
        return self._tags

    # ------------------------------------------------------------------ per sequence

    def read(self, local_idx: int, key: str) -> np.ndarray:
        """One h5py read: sequence ``local_idx`` of this file, data key ``key``."""
        dataset, column, is_string = self._readers.get(key) or self._make_reader(key)
        offsets = self._offsets
        start, end = offsets.item(local_idx, column), offsets.item(local_idx + 1, column)
        if is_string:
            return np.array(dataset.asstr()[start:end], dtype=object)
        return dataset[start:end]

    def length(self, local_idx: int, key: str) -> int:
        if self._offsets is None:
            self._offsets = self._load_offsets()
        column = self.keys[key].column
        return self._offsets.item(local_idx + 1, column) - self._offsets.item(local_idx, column)

    def tag(self, local_idx: int) -> str:
        tags = self._tags if self._tags is not None else self.tags
        return _decode(tags.item(local_idx))

    def forget_handle(self) -> None:
        """Drop the h5py handle without closing it (it belongs to the parent process after a fork)."""
        self._handle, self._readers = None, {}

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self.forget_handle()


def _forget_handle_of(ref: weakref.ref[_HDFFile]) -> None:
    hdf_file = ref()
    if hdf_file is not None:
        hdf_file.forget_handle()


def _dtype_name(dtype: np.dtype) -> str:
    import h5py

    if h5py.check_string_dtype(dtype) is not None and dtype.kind == "O":
        return STRING_DTYPE
    return dtype.name if dtype.kind != "S" else str(dtype)


class HDFDataset(Dataset):
    """Sequences from one or more HDF files in RETURNN's format, read lazily (see the module docstring).

    The common option ``window`` stacks each frame of ``data`` with its neighbours (see :class:`Dataset`).

    Several files are one corpus, in the order given. Their keys must agree: a later file may have more keys
    (they are ignored, with a warning), but not fewer, and each key's dimension, dtype and shape must match.

    :param files: the HDF files
    :param use_cache_manager: fetch each file through :func:`returnn.util.basic.cf` (the cluster file cache)
    :param cache_byte_size: accepted for RETURNN configs; this dataset never caches data (reads are lazy)
    """

    supports_window = True

    def __init__(
        self,
        files: Sequence[str] | None = None,
        use_cache_manager: bool = False,
        cache_byte_size: int = 0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(files, str):
            raise DatasetError(f"{self}: 'files' must be a list of file names, got the string {files!r}")
        self.use_cache_manager = use_cache_manager
        if cache_byte_size:
            logger.log(V4, f"{self}: cache_byte_size={cache_byte_size} has no effect, HDFDataset reads lazily")
        self._files: list[_HDFFile] = []
        self._file_starts: list[int] = [0]  # corpus index of each file's first sequence, then the total
        self._keys: dict[str, _KeyInfo] = {}
        self._given_files: list[str] = []  # as given, before the cache manager
        for filename in files or []:
            self._add_file(filename)

    def add_file(self, filename: str) -> None:
        """Append the sequences of another file to the corpus (RETURNN's API; also kept in pickled copies)."""
        self._add_file(filename)
        # Pickled copies (DataLoader workers) are rebuilt from the constructor arguments: keep them complete.
        positional = dict(zip(("files", "use_cache_manager", "cache_byte_size"), self._ctor_args))
        self._ctor_args = ()
        self._ctor_kwargs = {**self._ctor_kwargs, **positional, "files": list(self._given_files)}

    def _add_file(self, filename: str) -> None:
        self._given_files.append(filename)
        if self.use_cache_manager:
            from returnn.util.basic import cf

            filename = cf(filename)
        hdf_file = _HDFFile(os.fspath(filename), owner=str(self))
        if not self._files:
            self._keys = dict(hdf_file.keys)
            self.labels = dict(hdf_file.labels)
        else:
            self._check_same_keys(hdf_file)
        self._files.append(hdf_file)
        self._file_starts.append(self._file_starts[-1] + hdf_file.num_seqs)
        self.num_outputs = {key: (self.get_data_dim(key), info.ndim) for key, info in self._keys.items()}
        self.num_inputs = self.get_data_dim("data") if "data" in self._keys else 0
        logger.debug(f"{self}: added {hdf_file.filename} ({hdf_file.num_seqs} seqs, keys {sorted(hdf_file.keys)})")

    def _check_same_keys(self, hdf_file: _HDFFile) -> None:
        first = self._files[0].filename
        missing = sorted(set(self._keys) - set(hdf_file.keys))
        if missing:
            raise DatasetError(
                f"{self}: HDF file {hdf_file.filename!r} lacks data keys {missing}, which {first!r} has; "
                "all files of one HDFDataset need the same keys"
            )
        for key, info in self._keys.items():
            other = hdf_file.keys[key]
            if not info.same_kind(other):
                raise DatasetError(
                    f"{self}: data key {key!r} differs between HDF files: {first!r} has dim {info.dim}, dtype "
                    f"{info.dtype}, frame shape {list(info.shape)}; {hdf_file.filename!r} has dim {other.dim}, "
                    f"dtype {other.dtype}, frame shape {list(other.shape)}"
                )
        extra = sorted(set(hdf_file.keys) - set(self._keys))
        if extra:
            logger.warning(f"{self}: ignoring data keys {extra} of {hdf_file.filename!r} (not in {first!r})")
        hdf_file.keys = {key: hdf_file.keys[key] for key in self._keys}

    @property
    def files(self) -> list[str]:
        """The HDF files read (after the cache manager), in corpus order."""
        return [hdf_file.filename for hdf_file in self._files]

    # ------------------------------------------------------------------ corpus

    def get_total_num_seqs(self) -> int:
        return self._file_starts[-1]

    def supports_sharding(self) -> bool:
        return True

    def _locate(self, corpus_idx: int) -> tuple[_HDFFile, int]:
        if len(self._files) == 1:
            return self._files[0], corpus_idx
        file_idx = bisect.bisect_right(self._file_starts, corpus_idx) - 1
        return self._files[file_idx], corpus_idx - self._file_starts[file_idx]

    def get_all_tags(self) -> list[str]:
        return [_decode(raw) for hdf_file in self._files for raw in hdf_file.tags.tolist()]

    def _get_seq_len_for_ordering(self) -> Callable[[int], int]:
        key = "data" if "data" in self._keys else sorted(self._keys)[0]

        def seq_len(corpus_idx: int) -> int:
            hdf_file, local_idx = self._locate(corpus_idx)
            return hdf_file.length(local_idx, key)

        return seq_len

    # ------------------------------------------------------------------ sequences

    def _key_info(self, key: str) -> _KeyInfo:
        info = self._keys.get(key)
        if info is None:
            raise DatasetError(f"{self}: unknown data key {key!r}; the HDF files have {sorted(self._keys)}")
        return info

    def _locate_seq(self, seq_idx: int) -> tuple[_HDFFile, int]:
        # On the path of every read: kept to a few lookups (see benchmarks/hdf_read.py).
        order = self._seq_order
        corpus_idx = order[seq_idx] if order is not None else self.get_corpus_seq_idx(seq_idx)
        if len(self._files) == 1:
            return self._files[0], corpus_idx
        return self._locate(corpus_idx)

    def get_data(self, seq_idx: int, key: str) -> np.ndarray:
        hdf_file, local_idx = self._locate_seq(seq_idx)
        return self._windowed(key, hdf_file.read(local_idx, key))

    def _windowed(self, key: str, values: np.ndarray) -> np.ndarray:
        """``data`` with each frame replaced by the ``window`` frames around it (option window)."""
        if key != "data" or self.window == 1:
            return values
        if values.ndim != 2:
            raise DatasetError(f"{self}: window needs 'data' of shape [T, dim], got {list(values.shape)}")
        half = self.window // 2
        padded = np.pad(values, ((half, half), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, self.window, axis=0)  # [T, dim, window]
        return np.ascontiguousarray(windows.transpose(0, 2, 1)).reshape(len(values), -1)

    def get_tag(self, seq_idx: int) -> str:
        hdf_file, local_idx = self._locate_seq(seq_idx)
        return hdf_file.tag(local_idx)

    def get_seq_length(self, seq_idx: int) -> dict[str, int]:
        hdf_file, local_idx = self._locate_seq(seq_idx)
        return {key: hdf_file.length(local_idx, key) for key in self._keys}

    def knows_lengths_without_loading(self) -> bool:
        # seqLengths and seqTags are read at start, and get_data reads any sequence directly; a subclass that changes
        # the data may change the lengths too
        cls = type(self)
        return cls.get_data is HDFDataset.get_data and cls.get_seq_length is HDFDataset.get_seq_length

    def have_get_corpus_seq(self) -> bool:
        return True

    def get_corpus_seq(self, corpus_idx: int) -> DatasetSeq:
        """The sequence at a corpus index, independent of the epoch's order."""
        hdf_file, local_idx = self._locate(corpus_idx)
        features = {key: self._windowed(key, hdf_file.read(local_idx, key)) for key in self._keys}
        return DatasetSeq(seq_idx=corpus_idx, features=features, seq_tag=hdf_file.tag(local_idx))

    # ------------------------------------------------------------------ description

    def get_data_keys(self) -> list[str]:
        return (["data"] if "data" in self._keys else []) + sorted(key for key in self._keys if key != "data")

    def get_target_list(self) -> list[str]:
        return sorted(key for key in self._keys if key != "data")

    def get_data_dim(self, key: str) -> int:
        return self._key_info(key).dim * (self.window if key == "data" else 1)

    def get_data_dtype(self, key: str) -> str:
        return self._key_info(key).dtype

    def is_data_sparse(self, key: str) -> bool:
        return self._key_info(key).sparse

    def get_data_shape(self, key: str) -> list[int]:
        shape = list(self._key_info(key).shape)
        return shape[:-1] + [shape[-1] * self.window] if key == "data" and self.window > 1 and shape else shape

    def len_info(self) -> str:
        return f"{self.name}, {self.get_total_num_seqs()} seqs in {len(self._files)} HDF file(s)"

    def close(self) -> None:
        """Close the h5py handles (they reopen on the next read)."""
        for hdf_file in self._files:
            hdf_file.close()
