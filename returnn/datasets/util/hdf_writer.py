"""Writers for RETURNN's HDF format: :class:`SimpleHDFWriter` (batches from user code) and :class:`HDFDatasetWriter`
(a copy of any dataset). Both are also importable from :mod:`returnn.datasets.hdf`.

The layout (what :class:`returnn.datasets.hdf.HDFDataset` and RETURNN read):

- ``inputs``: the ``data`` key, all sequences concatenated along the first axis (``[sum T, ...]``);
  1-d integer data is sparse, its dimension is the root attribute ``inputPattSize``.
- ``targets/data/<key>``: every other key, concatenated the same way; ``targets/size`` holds the attribute
  ``<key> = [dim, ndim]`` (``ndim`` counts the time axis: 1 for sparse labels, 2 for ``[T, D]`` features);
  ``targets/labels/<key>`` the label names, where the key has them.
- ``seqLengths``: int32 ``[num_seqs, columns]``: column 0 is ``inputs`` (when present), then the target keys in
  sorted order. A file without targets still has two columns (RETURNN's reader expects a second, unused one).
- ``seqTags``: one string per sequence. ``labels``: label names of ``inputs`` (may be empty).
- Root attributes ``numSeqs``, ``numTimesteps`` (frames of ``inputs``), ``inputPattSize``, ``numLabels``,
  ``numDims``.

Files are written under a temporary name next to the destination and renamed on :meth:`close`, so that an
interrupted dump never leaves a truncated file behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from returnn.datasets.basic import STRING_DTYPE
from returnn.errors import DatasetError

if TYPE_CHECKING:
    import h5py

    from returnn.datasets.basic import Dataset

__all__ = ["SimpleHDFWriter", "HDFDatasetWriter"]

logger = logging.getLogger(__name__)

INPUT_KEY = "data"  # the key that HDFDataset reads from "inputs"
_CHUNK_BYTES = 256 * 1024  # chunks of this size read fast in sequence and in random order
_MAX_CHUNK_ROWS = 65536


def _string_dtype() -> Any:
    import h5py

    return h5py.string_dtype("utf-8")


def _as_label_bytes(labels: Sequence[str]) -> np.ndarray:
    """Label names as fixed-length UTF-8 byte strings, the type RETURNN writes and reads."""
    encoded = [label.encode("utf-8") if isinstance(label, str) else bytes(label) for label in labels]
    return np.array(encoded, dtype=f"S{max([len(b) for b in encoded] + [1])}")


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _HDFAppender:
    """Appends sequences to a file in RETURNN's HDF layout (the part both writers share).

    The data keys are fixed by the first appended sequence (or by :meth:`declare_target`): the columns of
    ``seqLengths`` depend on them.
    """

    def __init__(self, filename: str, *, has_inputs: bool, extend_existing_file: bool = False, overwrite: bool = False):
        import h5py

        self.filename = os.fspath(filename)
        self.extend_existing_file = extend_existing_file
        directory = os.path.dirname(os.path.abspath(self.filename))
        if extend_existing_file and not os.path.isfile(self.filename):
            raise DatasetError(
                f"HDF file {self.filename!r} does not exist, so it cannot be extended; "
                "create it first, or pass extend_existing_file=False"
            )
        if not extend_existing_file and not overwrite and os.path.exists(self.filename):
            raise DatasetError(
                f"HDF file {self.filename!r} already exists; delete it first, or pass extend_existing_file=True "
                "to append to it"
            )
        if not os.path.isdir(directory):
            raise DatasetError(f"cannot write HDF file {self.filename!r}: directory {directory!r} does not exist")
        fd, self.tmp_filename = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(self.filename)}.", suffix=".tmp"
        )
        os.close(fd)
        os.chmod(self.tmp_filename, 0o666 & ~_umask())  # mkstemp makes it private (0600); outputs are shared
        self.file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._target_keys: list[str] | None = None  # sorted; fixed once sequences were written
        try:
            if extend_existing_file:
                shutil.copyfile(self.filename, self.tmp_filename)
                self.file = self._open_h5(h5py, "r+")
                self._open_existing(has_inputs)
            else:
                self.file = self._open_h5(h5py, "w")
                self._create_new(has_inputs)
        except BaseException:
            self.abort()
            raise

    def _open_h5(self, h5py: Any, mode: str) -> h5py.File:
        try:
            return h5py.File(self.tmp_filename, mode)
        except OSError as exc:
            raise DatasetError(f"cannot open HDF file {self.filename!r} for writing: {exc}") from exc

    # ------------------------------------------------------------------ set-up

    def _create_new(self, has_inputs: bool) -> None:
        f = self.file
        f.attrs["numSeqs"] = 0
        f.attrs["numTimesteps"] = 0
        f.attrs["inputPattSize"] = 1
        f.attrs["numLabels"] = 1
        f.attrs["numDims"] = 1
        f.create_dataset("labels", shape=(0,), dtype="S5")
        f.create_dataset("seqLengths", shape=(0, 2), dtype="int32", maxshape=(None, None), chunks=(4096, 2))
        f.create_dataset("seqTags", shape=(0,), dtype=_string_dtype(), maxshape=(None,), chunks=(4096,))
        self.has_inputs = has_inputs
        self._num_seqs = 0

    def _open_existing(self, has_inputs: bool) -> None:
        f = self.file
        missing = [name for name in ("seqLengths", "seqTags") if name not in f]
        if missing:
            raise DatasetError(f"cannot extend HDF file {self.filename!r}: it lacks {missing}; is it an HDF dataset?")
        self.has_inputs = "inputs" in f
        if has_inputs and not self.has_inputs:
            raise DatasetError(f"cannot extend HDF file {self.filename!r}: it has no 'inputs' dataset")
        if self.has_inputs:
            self._datasets[INPUT_KEY] = f["inputs"]
        keys = sorted(f["targets/data"].keys()) if "targets/data" in f else []
        for key in keys:
            self._datasets[key] = f["targets/data"][key]
        self._num_seqs = int(f["seqLengths"].shape[0])
        self._target_keys = keys if (keys or self._num_seqs) else None
        for name in ("seqLengths", "seqTags", *(["inputs"] if self.has_inputs else [])):
            if f[name].maxshape[0] is not None:
                raise DatasetError(
                    f"cannot extend HDF file {self.filename!r}: its dataset {name!r} has a fixed size "
                    "(written by HDFDatasetWriter or RETURNN's hdf_dump); only files from SimpleHDFWriter can grow"
                )

    def set_inputs_info(self, dim: int | None, labels: Sequence[str] | None) -> None:
        """Root attributes and label names that describe ``inputs``."""
        assert self.file is not None
        if self.extend_existing_file:
            return
        self.file.attrs["inputPattSize"] = dim or 1
        self.file.attrs["numLabels"] = dim or 1
        if labels:
            del self.file["labels"]
            self.file.create_dataset("labels", data=_as_label_bytes(labels))

    def declare_target(
        self,
        key: str,
        *,
        dim: int | None,
        ndim: int,
        dtype: Any,
        feature_shape: Sequence[int],
        labels: Sequence[str] | None = None,
    ) -> None:
        """Create ``targets/data/<key>`` (with its size attribute and labels) before the first sequence."""
        assert self.file is not None
        if key in self._datasets:
            return
        if self._target_keys is not None:
            raise DatasetError(
                f"HDF file {self.filename!r}: data key {key!r} first appears after sequences were written; "
                f"the file holds {self._target_keys}. Give every key from the first sequence on "
                "(SimpleHDFWriter: declare it with extra_type=...)"
            )
        if key == INPUT_KEY:
            raise DatasetError(
                f"HDF file {self.filename!r}: extra data may not be called {INPUT_KEY!r} (that name is the inputs)"
            )
        targets = self.file.require_group("targets")
        for group in ("data", "size", "labels"):
            targets.require_group(group)
        self._datasets[key] = self._create_growing(targets["data"], key, dtype, tuple(feature_shape))
        targets["size"].attrs[key] = np.array([dim or 1, ndim], dtype="int64")
        if labels:
            targets["labels"].create_dataset(key, data=_as_label_bytes(labels))

    def _create_inputs(self, dtype: Any, feature_shape: tuple[int, ...]) -> None:
        assert self.file is not None
        self._datasets[INPUT_KEY] = self._create_growing(self.file, "inputs", dtype, feature_shape)

    @staticmethod
    def _create_growing(group: h5py.Group, name: str, dtype: Any, feature_shape: tuple[int, ...]) -> h5py.Dataset:
        dtype = _string_dtype() if _is_string_dtype(dtype) else np.dtype(dtype)
        row_bytes = int(np.prod(feature_shape, dtype=np.int64)) * (16 if _is_string_dtype(dtype) else dtype.itemsize)
        rows = int(min(_MAX_CHUNK_ROWS, max(1, _CHUNK_BYTES // max(1, row_bytes))))
        return group.create_dataset(
            name,
            shape=(0, *feature_shape),
            dtype=dtype,
            maxshape=(None, *feature_shape),
            chunks=(rows, *feature_shape),
        )

    # ------------------------------------------------------------------ appending

    def _fix_keys(self, first_seq: dict[str, np.ndarray]) -> None:
        """On the first sequence: create missing datasets, then fix the ``seqLengths`` columns."""
        assert self.file is not None
        for key, value in first_seq.items():
            if key == INPUT_KEY and INPUT_KEY not in self._datasets:
                self._create_inputs(value.dtype, value.shape[1:])
            elif key != INPUT_KEY and key not in self._datasets:
                dim = int(value.shape[-1]) if value.ndim >= 2 else 1
                self.declare_target(key, dim=dim, ndim=value.ndim, dtype=value.dtype, feature_shape=value.shape[1:])
        self._target_keys = sorted(key for key in self._datasets if key != INPUT_KEY)
        columns = int(self.has_inputs) + max(len(self._target_keys), 1)
        self.file["seqLengths"].resize(columns, axis=1)

    def append(self, tags: Sequence[str], seqs: Sequence[dict[str, np.ndarray]]) -> None:
        """Append sequences: ``seqs[i][key]`` is sequence i's data for key, with time as first axis."""
        if self.file is None:
            raise DatasetError(
                f"HDF file {self.filename!r}: cannot add sequences, the writer was closed; to add more, open the file "
                "again with SimpleHDFWriter(..., extend_existing_file=True)"
            )
        assert len(tags) == len(seqs)
        if not seqs:
            return
        if self._target_keys is None:
            self._fix_keys(seqs[0])
        expected = ([INPUT_KEY] if self.has_inputs else []) + self._target_keys
        lengths = np.zeros((len(seqs), self.file["seqLengths"].shape[1]), dtype="int32")
        for i, (tag, seq) in enumerate(zip(tags, seqs)):
            if seq.keys() != set(expected):
                raise self._keys_error(tag, seq.keys(), expected)
            for column, key in enumerate(expected):
                lengths[i, column] = seq[key].shape[0]
        for key in expected:
            self._append_key(key, [seq[key] for seq in seqs], tags)
        self._append_rows(self.file["seqLengths"], lengths)
        self._append_rows(self.file["seqTags"], self._encode_tags(tags))
        self._num_seqs += len(seqs)
        self.file.attrs["numSeqs"] = self._num_seqs
        if self.has_inputs:
            self.file.attrs["numTimesteps"] = self._datasets[INPUT_KEY].shape[0]

    def _keys_error(self, tag: str, keys: Any, expected: list[str]) -> DatasetError:
        new, missing = sorted(set(keys) - set(expected)), sorted(set(expected) - set(keys))
        problems = [f"lacks data keys {missing}"] if missing else []
        if new:
            problems.append(
                f"has data keys {new} that earlier sequences did not have (SimpleHDFWriter: declare them "
                "with extra_type=... and give them from the first batch on)"
            )
        return DatasetError(
            f"HDF file {self.filename!r}, sequence {tag!r}: {'; '.join(problems)}; every sequence needs the "
            f"same keys, the file holds {expected}"
        )

    def _append_key(self, key: str, values: list[np.ndarray], tags: Sequence[str]) -> None:
        dataset = self._datasets[key]
        for value, tag in zip(values, tags):
            if value.shape[1:] != dataset.shape[1:]:
                raise DatasetError(
                    f"HDF file {self.filename!r}, sequence {tag!r}, key {key!r}: shape {value.shape} does not fit "
                    f"the file's [T, {', '.join(map(str, dataset.shape[1:]))}] (from earlier sequences)"
                )
        if dataset.dtype.kind == "O":
            data = np.concatenate([np.asarray(v, dtype=object) for v in values])
        else:
            data = np.concatenate(values).astype(dataset.dtype, copy=False)
        self._append_rows(dataset, data)

    def _encode_tags(self, tags: Sequence[str]) -> np.ndarray:
        tag_dtype = self.file["seqTags"].dtype
        if tag_dtype.kind != "S":
            return np.array(list(tags), dtype=object)
        encoded = [tag.encode("utf-8") for tag in tags]
        too_long = [tag for tag, raw in zip(tags, encoded) if len(raw) > tag_dtype.itemsize]
        if too_long:
            raise DatasetError(
                f"HDF file {self.filename!r} stores sequence tags of at most {tag_dtype.itemsize} bytes; "
                f"{too_long[0]!r} is longer"
            )
        return np.array(encoded, dtype=tag_dtype)

    @staticmethod
    def _append_rows(dataset: h5py.Dataset, rows: np.ndarray) -> None:
        start = dataset.shape[0]
        dataset.resize(start + rows.shape[0], axis=0)
        if rows.shape[0]:
            dataset[start:] = rows

    # ------------------------------------------------------------------ finishing

    def close(self) -> None:
        """Close the file and move it to its destination."""
        if self.file is None:
            return
        if self._target_keys is None and self._num_seqs == 0:
            self.file["seqLengths"].resize(int(self.has_inputs) + 1, axis=1)
        self.file.close()
        self.file = None
        os.replace(self.tmp_filename, self.filename)
        logger.info(f"wrote HDF file {self.filename} ({self._num_seqs} sequences)")

    def abort(self) -> None:
        """Close and delete the temporary file; the destination stays as it was."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if os.path.exists(self.tmp_filename):
            os.remove(self.tmp_filename)


def _is_string_dtype(dtype: Any) -> bool:
    if isinstance(dtype, str) and dtype in (STRING_DTYPE, "str", "object"):
        return True
    return np.dtype(dtype).kind in ("O", "U")


class SimpleHDFWriter:
    """Writes batches of sequences (e.g. from a forward hook) into an HDF file that :class:`HDFDataset` reads.

    Usable as a context manager; the file appears under its name at :meth:`close`.

    :param filename: the HDF file to create (it must not exist, unless ``extend_existing_file``)
    :param dim: feature dimension of the inputs (dense), or number of classes (sparse); None if not known/needed
    :param ndim: axes of one sequence's inputs (without batch); default 2 (``[T, dim]``) if ``dim`` is given, else 1
    :param labels: names of the ``dim`` classes or features
    :param extra_type: ``{key: (dim, ndim, dtype)}`` for extra data given to :meth:`insert_batch`
    :param swmr: not supported (RETURNN never finished it either); must be False
    :param extend_existing_file: append to an existing file written by this class
    :param extra_labels: ``{key: labels}`` for extra data
    """

    def __init__(
        self,
        filename: str,
        dim: int | None,
        labels: Sequence[str] | None = None,
        ndim: int | None = None,
        extra_type: dict[str, tuple[int | None, int, str]] | None = None,
        swmr: bool = False,
        extend_existing_file: bool = False,
        extra_labels: dict[str, Sequence[str]] | None = None,
    ):
        if swmr:
            raise DatasetError("SimpleHDFWriter: swmr=True is not supported; write the file, then read it")
        if ndim is None:
            ndim = 1 if dim is None else 2
        if labels is not None and dim is not None and len(labels) != dim:
            raise DatasetError(f"SimpleHDFWriter({filename!r}): got {len(labels)} labels for dim={dim}")
        self.filename = filename
        self.dim = dim
        self.ndim = ndim
        self.labels = labels
        self._appender = _HDFAppender(filename, has_inputs=True, extend_existing_file=extend_existing_file)
        self._appender.set_inputs_info(dim, labels)
        for key, (extra_dim, extra_ndim, dtype) in (extra_type or {}).items():
            self._declare_extra(key, extra_dim, extra_ndim, dtype, (extra_labels or {}).get(key))

    def _declare_extra(
        self, key: str, dim: int | None, ndim: int, dtype: str, labels: Sequence[str] | None = None
    ) -> None:
        ndim = max(ndim, 1)  # per-sequence scalars get a time axis of length 1
        if ndim > 2:
            raise DatasetError(
                f"SimpleHDFWriter({self.filename!r}): extra_type[{key!r}] has ndim={ndim}; "
                "extra data can have a time axis and at most one feature axis"
            )
        if labels is not None and dim is not None and len(labels) != dim:
            raise DatasetError(f"SimpleHDFWriter({self.filename!r}): got {len(labels)} labels for extra {key!r}")
        feature_shape = (dim,) if ndim == 2 else ()
        self._appender.declare_target(key, dim=dim, ndim=ndim, dtype=dtype, feature_shape=feature_shape, labels=labels)

    def insert_batch(
        self,
        inputs: np.ndarray,
        seq_len: Sequence[int] | np.ndarray | dict[int, Sequence[int] | np.ndarray],
        seq_tag: Sequence[str | bytes],
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Append a batch of sequences.

        :param inputs: ``[B, T, ...]`` padded, with ``ndim`` axes after the batch axis
        :param seq_len: the B lengths of the time axis, or ``{axis: lengths}`` for several dynamic axes
            (counted without the batch axis); such sequences are stored flattened, and their sizes as the
            extra key ``sizes``
        :param seq_tag: B sequence tags
        :param extra: ``{key: value}`` where ``value[b]`` is sequence b's extra data (stored as it is, not cut
            to ``seq_len``), e.g. ``{"classes": labels}``
        """
        inputs = np.asarray(inputs)
        tags = [tag.decode("utf-8") if isinstance(tag, bytes) else str(tag) for tag in seq_tag]
        n_batch = len(tags)
        if inputs.ndim != self.ndim + 1 or inputs.shape[0] != n_batch:
            raise DatasetError(
                f"SimpleHDFWriter({self.filename!r}).insert_batch: inputs of shape {inputs.shape} for {n_batch} tags; "
                f"expected [{n_batch}, ...] with {self.ndim} axes after the batch axis (ndim={self.ndim})"
            )
        lengths = self._check_seq_len(seq_len, inputs, n_batch)
        dense = len(lengths) < self.ndim
        if self.dim and dense and inputs.shape[-1] != self.dim:
            raise DatasetError(
                f"SimpleHDFWriter({self.filename!r}).insert_batch: inputs have feature dim {inputs.shape[-1]}, "
                f"the writer was created with dim={self.dim}"
            )
        extra = {key: value for key, value in (extra or {}).items()}
        for key, value in extra.items():
            if len(value) != n_batch:
                raise DatasetError(
                    f"SimpleHDFWriter({self.filename!r}).insert_batch: extra {key!r} has {len(value)} entries "
                    f"for {n_batch} sequences"
                )
        seqs = []
        for b in range(n_batch):
            sizes = [int(axis_lengths[b]) for axis_lengths in lengths]
            data = inputs[b][tuple(slice(0, size) for size in sizes)]
            seq = {INPUT_KEY: data.reshape((int(np.prod(sizes)), *inputs.shape[1 + len(sizes) :]))}
            if len(sizes) > 1:
                seq["sizes"] = np.array(sizes, dtype="int32")
            for key, value in extra.items():
                seq[key] = _as_extra_seq(value[b])
            seqs.append(seq)
        self._appender.append(tags, seqs)

    def _check_seq_len(self, seq_len: Any, inputs: np.ndarray, n_batch: int) -> list[np.ndarray]:
        if not isinstance(seq_len, dict):
            seq_len = {0: seq_len}
        if sorted(seq_len) != list(range(len(seq_len))) or len(seq_len) > self.ndim:
            raise DatasetError(
                f"SimpleHDFWriter({self.filename!r}).insert_batch: seq_len axes {sorted(seq_len)} must be "
                f"0, 1, ... (at most ndim={self.ndim} axes)"
            )
        lengths = [np.asarray(seq_len[axis], dtype=np.int64).reshape(-1) for axis in range(len(seq_len))]
        for axis, axis_lengths in enumerate(lengths):
            if axis_lengths.shape[0] != n_batch or (n_batch and axis_lengths.max() > inputs.shape[1 + axis]):
                raise DatasetError(
                    f"SimpleHDFWriter({self.filename!r}).insert_batch: seq_len for axis {axis} is "
                    f"{axis_lengths.tolist()}; expected {n_batch} lengths of at most {inputs.shape[1 + axis]}"
                )
        return lengths

    def close(self) -> None:
        """Finish the file (it appears under its name only now)."""
        self._appender.close()

    def __enter__(self) -> SimpleHDFWriter:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._appender.abort()


def _as_extra_seq(value: Any) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        value = np.array([value.decode("utf-8") if isinstance(value, bytes) else value], dtype=object)
    value = np.asarray(value)
    if value.dtype.kind == "U":
        value = value.astype(object)
    if value.ndim == 0:
        value = value[None]
    return value


class HDFDatasetWriter:
    """Writes all sequences of any dataset into an HDF file (what ``tools/hdf_dump.py`` does); an existing file of
    that name is replaced.

    The key ``data`` becomes ``inputs``, every other key a target; dimensions, dtypes and labels come from the
    dataset. Sequences are read once, in the dataset's order for the epoch.
    """

    def __init__(self, filename: str):
        self.filename = filename
        self._appender: _HDFAppender | None = None

    def dump_from_dataset(
        self,
        dataset: Dataset,
        epoch: int = 1,
        start_seq: int = 0,
        end_seq: float = float("inf"),
        use_progress_bar: bool = True,
        batch_size: int = 64,
    ) -> int:
        """Dump sequences ``start_seq`` .. ``end_seq`` (both inclusive, as in RETURNN) of ``epoch``.

        :param use_progress_bar: log progress every few seconds at verbosity 4 (kept for RETURNN's signature)
        :param batch_size: sequences per write
        :return: the number of sequences written
        """
        import time

        dataset.init_seq_order(epoch=epoch)
        keys = sorted(dataset.get_data_keys())
        if not keys:
            raise DatasetError(f"dataset {dataset!r} has no data keys, nothing to write to {self.filename!r}")
        # Overwrite, as RETURNN does: pipelines pass a file they created empty (mkstemp).
        self._appender = appender = _HDFAppender(self.filename, has_inputs=INPUT_KEY in keys, overwrite=True)
        try:
            self._declare_keys(dataset, keys)
            tags: list[str] = []
            seqs: list[dict[str, np.ndarray]] = []
            seq_idx, written, last_log = start_seq, 0, time.monotonic()
            while seq_idx <= end_seq and dataset.is_less_than_num_seqs(seq_idx):
                tags.append(dataset.get_tag(seq_idx))
                seqs.append({key: _as_extra_seq(dataset.get_data(seq_idx, key)) for key in keys})
                if len(seqs) >= batch_size:
                    appender.append(tags, seqs)
                    written += len(seqs)
                    tags, seqs = [], []
                if use_progress_bar and time.monotonic() - last_log > 10:
                    logger.info(f"hdf dump: {seq_idx - start_seq + 1} sequences written to {self.filename}")
                    last_log = time.monotonic()
                seq_idx += 1
            appender.append(tags, seqs)
            written += len(seqs)
        except BaseException:
            appender.abort()
            raise
        if written == 0:
            logger.warning(f"hdf dump: no sequences in range {start_seq}..{end_seq} of {dataset!r}")
        return written

    def _declare_keys(self, dataset: Dataset, keys: list[str]) -> None:
        assert self._appender is not None
        labels = getattr(dataset, "labels", None) or {}
        for key in keys:
            dim = dataset.get_data_dim(key)
            key_labels = labels.get(key) if key in labels and dim is not None and len(labels[key]) == dim else None
            if key == INPUT_KEY:
                self._appender.set_inputs_info(dim, key_labels)
                continue
            shape = tuple(dataset.get_data_shape(key))
            dtype = dataset.get_data_dtype(key)
            self._appender.declare_target(
                key,
                dim=dim,
                ndim=1 + len(shape),
                dtype=STRING_DTYPE if _is_string_dtype(dtype) else dtype,
                feature_shape=shape,
                labels=key_labels,
            )
        if "classes" in keys:  # RETURNN's oldest readers take the number of classes from here
            self._appender.file.attrs["numLabels"] = dataset.get_data_dim("classes") or 1

    def close(self) -> None:
        """Finish the file (it appears under its name only now)."""
        if self._appender is not None:
            self._appender.close()
