"""Generated datasets: dummy data for tests and demos, in-memory data, and small memory tasks.

Every generated sequence is a function of the epoch's random seed and its corpus index alone, so any process
(a DataLoader worker, a distributed rank) that generates sequence i of an epoch gets the same sequence, and a
finite generating dataset can be sharded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from returnn.datasets.basic import Dataset, DatasetSeq
from returnn.datasets.cached2 import CachedDataset2
from returnn.errors import DatasetError

__all__ = [
    "GeneratingDataset",
    "DummyDataset",
    "DummyDatasetMultipleSequenceLength",
    "DummyDatasetMultipleDataKeys",
    "StaticDataset",
    "Task12AXDataset",
    "TaskEpisodicCopyDataset",
    "TaskNumberBaseConvertDataset",
    "CopyTaskDataset",
    "convert_data_dims",
]

DataDims = dict[str, tuple[int, int]]


def convert_data_dims(dims: int | dict[str, Any] | None, *, owner: object = "dataset") -> DataDims:
    """Normalize RETURNN's ways of giving data dimensions to ``{key: (dim, ndim)}``.

    An int is the number of classes of sparse ``"classes"``. Dict values: an int (sparse, except for
    ``"data"``), a ``(dim, ndim)`` pair (ndim 1 = sparse ``[T]``, 2 = dense ``[T, dim]``), or a dict with
    ``dim`` and optionally ``shape`` (without time) and ``sparse``.
    """
    if dims is None:
        return {}
    if isinstance(dims, int):
        return {"classes": (dims, 1)}
    if not isinstance(dims, dict):
        raise DatasetError(f"{owner}: output_dim must be an int or a dict, got {dims!r}")
    result = {}
    for key, value in dims.items():
        if isinstance(value, int):
            result[key] = (value, 2 if key == "data" else 1)
        elif isinstance(value, (tuple, list)) and len(value) == 2:
            result[key] = (int(value[0]), int(value[1]))
        elif isinstance(value, dict) and "dim" in value:
            shape = value.get("shape")
            sparse = value.get("sparse", False)
            ndim = len(shape) + 1 if shape is not None else (1 if sparse else 2)
            result[key] = (int(value["dim"] or 0), ndim)
        else:
            raise DatasetError(f"{owner}: output_dim[{key!r}] must be dim, (dim, ndim) or a dict, got {value!r}")
    return result


class GeneratingDataset(CachedDataset2):
    """Base class of generated data. A subclass implements :meth:`generate_seq`.

    ``generate_seq`` draws its random numbers from ``self.random`` (a :class:`numpy.random.RandomState`), which
    is seeded for each sequence from the epoch's seed and the sequence's corpus index.

    :param input_dim: the dimension of dense ``"data"`` (None: no such key, or it is given in ``output_dim``).
    :param output_dim: the other keys, see :func:`convert_data_dims`.
    :param num_seqs: sequences per epoch; ``float("inf")`` for an endless stream (which cannot be sharded).
    """

    def __init__(
        self,
        input_dim: int | None,
        output_dim: int | dict[str, Any] | None,
        num_seqs: int | float = float("inf"),
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not (isinstance(num_seqs, int) and num_seqs >= 0) and num_seqs != math.inf:
            raise DatasetError(f"{self}: num_seqs must be a non-negative int or float('inf'), got {num_seqs!r}")
        self.num_inputs = input_dim or 0
        self.num_outputs = convert_data_dims(output_dim, owner=self)
        if "data" not in self.num_outputs and input_dim is not None:
            self.num_outputs["data"] = (input_dim, 2)
        self._total_num_seqs = num_seqs
        self._random: np.random.RandomState | None = None
        self._random_corpus_idx: int | None = None  # ``random`` is seeded for this sequence

    @property
    def random(self) -> np.random.RandomState:
        """The random state of the sequence being generated. Made on first use: seeding a RandomState costs about as
        much as generating a small sequence, and many datasets (StaticDataset, DummyDataset) draw nothing."""
        if self._random is None:
            corpus_idx = self._random_corpus_idx
            self._random = np.random.RandomState(1 if corpus_idx is None else self._seq_random_seed(corpus_idx))
        return self._random

    @random.setter
    def random(self, value: np.random.RandomState) -> None:
        self._random = value

    def generate_seq(self, seq_idx: int) -> DatasetSeq:
        """Make the sequence of corpus index ``seq_idx`` with ``self.random``."""
        raise NotImplementedError(f"{type(self).__name__}.generate_seq")

    def get_total_num_seqs(self) -> int:
        if math.isinf(self._total_num_seqs):
            raise DatasetError(f"{self}: infinite number of sequences")
        return int(self._total_num_seqs)

    def supports_sharding(self) -> bool:
        return not math.isinf(self._total_num_seqs)

    def _get_epoch_seq_order(
        self, epoch: int | None, seq_list: Sequence[str] | None, seq_order: Sequence[int] | None
    ) -> list[int] | None:
        if math.isinf(self._total_num_seqs):
            if seq_list is not None or seq_order is not None:
                raise DatasetError(f"{self}: an endless generated stream cannot follow a given sequence list")
            self._num_seqs = math.inf
            return None
        return super()._get_epoch_seq_order(epoch, seq_list, seq_order)

    def _get_seq_len_for_ordering(self) -> Callable[[int], int]:
        def seq_len(corpus_idx: int) -> int:
            seq = self._generate(corpus_idx)
            key = "data" if "data" in seq.features else next(iter(seq.features))
            return seq.num_frames[key]

        return seq_len

    def _generate(self, corpus_idx: int) -> DatasetSeq:
        self._random_corpus_idx, self._random = corpus_idx, None
        seq = self.generate_seq(corpus_idx)
        for key, value in seq.features.items():
            # Hand out what get_data_dtype declares (numpy's defaults would give float64 / int64).
            seq.features[key] = np.asarray(value, dtype=self.get_data_dtype(key) if key in self.num_outputs else None)
        seq.seq_tag = f"seq-{corpus_idx}"
        return seq

    def have_get_corpus_seq(self) -> bool:
        return True

    def get_corpus_seq(self, corpus_idx: int) -> DatasetSeq:
        return self._generate(corpus_idx)

    def get_tag(self, seq_idx: int) -> str:
        return f"seq-{self.get_corpus_seq_idx(seq_idx)}"

    def get_corpus_seq_idx(self, seq_idx: int) -> int:
        return seq_idx if self._seq_order is None else self._seq_order[seq_idx]


def _dummy_values(start: int, count: int, max_value: float, shift: float, scale: float) -> np.ndarray:
    """RETURNN's dummy features: a running counter, wrapped at max_value, shifted and scaled."""
    return ((np.arange(start, start + count) % max_value) + shift) * scale


class DummyDataset(GeneratingDataset):
    """Deterministic meaningless data: dense ``"data"`` ``[seq_len, input_dim]`` and sparse ``"classes"``.

    Sequence i holds a counter running from i: the features are ``((c % input_max_value) + input_shift) *
    input_scale`` for the next ``seq_len * input_dim`` values of the counter, the classes ``c % output_dim`` for
    the ``seq_len`` values after those.

    :param input_shift: default ``-input_max_value / 2``.
    :param input_scale: default ``1 / input_max_value``.
    """

    def __init__(
        self,
        input_dim: int | None,
        output_dim: int | dict[str, Any],
        num_seqs: int | float,
        seq_len: int | dict[str, int] = 2,
        input_max_value: float = 10.0,
        input_shift: float | None = None,
        input_scale: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(input_dim=input_dim, output_dim=output_dim, num_seqs=num_seqs, **kwargs)
        if not math.isinf(num_seqs):
            self._num_seqs = num_seqs  # known before the first epoch, as in RETURNN (an epoch's order replaces it)
        self.seq_len = seq_len
        self.input_max_value = input_max_value
        self.input_shift = -input_max_value / 2.0 if input_shift is None else input_shift
        self.input_scale = 1.0 / input_max_value if input_scale is None else input_scale

    def _seq_len_of(self, key: str) -> int:
        if isinstance(self.seq_len, dict):
            if key not in self.seq_len:
                raise DatasetError(f"{self}: seq_len has no entry for data key {key!r}: {self.seq_len!r}")
            return self.seq_len[key]
        return self.seq_len

    def _make_keys(self, seq_idx: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
        counter = seq_idx
        features = {}
        for key in keys:
            dim, ndim = self.num_outputs[key]
            seq_len = self._seq_len_of(key)
            if ndim <= 1:
                features[key] = np.arange(counter, counter + seq_len) % dim
                counter += seq_len
            else:
                values = _dummy_values(counter, seq_len * dim, self.input_max_value, self.input_shift, self.input_scale)
                features[key] = values.reshape(seq_len, dim)
                counter += seq_len * dim
        return features

    def generate_seq(self, seq_idx: int) -> DatasetSeq:
        if "classes" not in self.num_outputs or "data" not in self.num_outputs:
            raise DatasetError(f"{self}: needs input_dim and output_dim for 'classes', got {self.num_outputs}")
        return DatasetSeq(seq_idx, self._make_keys(seq_idx, ["data", "classes"]))


class DummyDatasetMultipleSequenceLength(DummyDataset):
    """Like :class:`DummyDataset`, with a length per key (default ``{"data": 10, "classes": 20}``)."""

    def __init__(self, input_dim: int, output_dim: int | dict[str, Any], num_seqs: int | float, seq_len=None, **kwargs):
        super().__init__(
            input_dim=input_dim,
            output_dim=output_dim,
            num_seqs=num_seqs,
            seq_len={"data": 10, "classes": 20} if seq_len is None else seq_len,
            **kwargs,
        )


class DummyDatasetMultipleDataKeys(DummyDataset):
    """Like :class:`DummyDataset`, for any data keys, each dense or sparse as ``output_dim`` says.

    :param output_dim: ``{key: (dim, ndim)}`` for every key of ``data_keys``.
    :param seq_len: one length for all keys, or a length per key (default 20).
    :param data_keys: the keys, in the order the counter runs through them (default ``["data", "classes"]``).
    """

    def __init__(
        self,
        output_dim: dict[str, Any],
        num_seqs: int | float,
        seq_len: int | dict[str, int] | None = None,
        data_keys: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        data_keys = list(data_keys or ["data", "classes"])
        if seq_len is None or isinstance(seq_len, int):
            seq_len = dict.fromkeys(data_keys, 20 if seq_len is None else seq_len)
        problems = []
        if not isinstance(output_dim, dict) or set(output_dim) != set(data_keys):
            problems.append(f"output_dim must be a dict with exactly the keys {data_keys}, got {output_dim!r}")
        if set(seq_len) != set(data_keys):
            problems.append(f"seq_len must have exactly the keys {data_keys}, got {seq_len!r}")
        if problems:
            raise DatasetError(f"{type(self).__name__}: " + "; ".join(problems))
        self.data_keys = data_keys
        super().__init__(input_dim=None, output_dim=output_dim, num_seqs=num_seqs, seq_len=seq_len, **kwargs)

    def get_data_keys(self) -> list[str]:
        return list(self.data_keys)

    def get_target_list(self) -> list[str]:
        return [key for key in self.data_keys if key != "data"]

    def generate_seq(self, seq_idx: int) -> DatasetSeq:
        return DatasetSeq(seq_idx, self._make_keys(seq_idx, self.data_keys))


class StaticDataset(GeneratingDataset):
    """Sequences given in memory: a list of ``{key: array}`` dicts, all with the same keys.

    :param data: the sequences.
    :param target_list: the target keys (default: every key but ``"data"``).
    :param output_dim: dimensions per key (see :func:`convert_data_dims`); keys not given are inferred: the last
        axis for dense data, the largest class index + 1 for 1-d integer data.
    :param input_dim: the dimension of ``"data"``.
    """

    def __init__(
        self,
        data: Sequence[dict[str, np.ndarray]],
        target_list: Sequence[str] | None = None,
        output_dim: int | dict[str, Any] | None = None,
        input_dim: int | None = None,
        **kwargs: Any,
    ):
        if not data:
            raise DatasetError("StaticDataset: data is empty; give at least one sequence")
        self.data = [{key: np.asarray(value) for key, value in seq.items()} for seq in data]
        self.data_keys = sorted(self.data[0])
        for idx, seq in enumerate(self.data):
            if sorted(seq) != self.data_keys:
                raise DatasetError(f"StaticDataset: sequence {idx} has keys {sorted(seq)}, the first {self.data_keys}")
        unknown = [key for key in target_list or [] if key not in self.data_keys]
        if unknown:
            raise DatasetError(f"StaticDataset: target_list keys {unknown} are not in the data keys {self.data_keys}")
        self.target_list = list(target_list) if target_list is not None else [k for k in self.data_keys if k != "data"]
        dims = convert_data_dims(output_dim, owner="StaticDataset")
        if input_dim is not None and "data" not in dims:
            dims["data"] = (input_dim, 2)
        inferred = {key for key in self.data_keys if key not in dims}
        for key in inferred:
            dims[key] = self._infer_dims(key)
        if input_dim is None and "data" in dims:
            input_dim = dims["data"][0]
        super().__init__(input_dim=input_dim, output_dim=dims, num_seqs=len(self.data), **kwargs)
        self.inferred_dims = inferred

    def _infer_dims(self, key: str) -> tuple[int, int]:
        first = self.data[0][key]
        if first.ndim >= 2:
            return first.shape[-1], first.ndim
        if first.ndim == 1 and np.issubdtype(first.dtype, np.integer):
            return max((int(seq[key].max()) for seq in self.data if seq[key].size), default=-1) + 1, 1
        return 1, first.ndim

    @classmethod
    def copy_from_dataset(cls, dataset: Dataset, start_seq_idx: int = 0, max_seqs: int | None = None):
        """A StaticDataset holding the sequences of ``dataset``'s current epoch (from ``start_seq_idx``)."""
        data = []
        seq_idx = start_seq_idx
        while dataset.is_less_than_num_seqs(seq_idx) and (max_seqs is None or len(data) < max_seqs):
            dataset.load_seqs(seq_idx, seq_idx + 1)
            data.append({key: dataset.get_data(seq_idx, key) for key in dataset.get_data_keys()})
            seq_idx += 1
        return cls(data=data, target_list=dataset.get_target_list(), output_dim=dict(dataset.num_outputs))

    def generate_seq(self, seq_idx: int) -> DatasetSeq:
        return DatasetSeq(seq_idx, dict(self.data[seq_idx]))

    def get_data_keys(self) -> list[str]:
        return list(self.data_keys)

    def get_target_list(self) -> list[str]:
        return list(self.target_list)

    def get_data_dtype(self, key: str) -> str:
        return str(self.data[0][key].dtype)

    def is_data_sparse(self, key: str) -> bool:
        return np.issubdtype(self.data[0][key].dtype, np.integer) and self.num_outputs[key][1] <= 1


def _one_hot(indices: Sequence[int], num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(indices, dtype=np.int64)]


class _SymbolTask(GeneratingDataset):
    """A task over symbol strings: one-hot dense ``"data"``, sparse ``"classes"``, both labelled."""

    input_symbols = ""
    output_symbols = ""

    def __init__(self, **kwargs: Any):
        super().__init__(input_dim=len(self.input_symbols), output_dim=len(self.output_symbols), **kwargs)
        self.labels = {"data": list(self.input_symbols), "classes": list(self.output_symbols)}

    def generate_input_str(self) -> str:
        raise NotImplementedError

    @classmethod
    def make_output_str(cls, input_str: str) -> str:
        raise NotImplementedError

    def generate_seq(self, seq_idx: int) -> DatasetSeq:
        input_str = self.generate_input_str()
        output_str = self.make_output_str(input_str)
        features = _one_hot([self.input_symbols.index(c) for c in input_str], len(self.input_symbols))
        targets = np.array([self.output_symbols.index(c) for c in output_str], dtype=np.int32)
        return DatasetSeq(seq_idx, features, targets)


class Task12AXDataset(_SymbolTask):
    """The 12-AX memory task: output "R" at an X after "1 ... A" or a Y after "2 ... B", else "L".

    The digit (1/2) is the outer context, the letter (A/B) the inner one; a sequence is 10 to 99 symbols.
    """

    input_symbols = "123ABCXYZ"
    output_symbols = "LR"

    def generate_input_str(self) -> str:
        seq_len = self.random.randint(10, 100)
        text = str(self.random.choice(["", "1", "2"]))
        while len(text) < seq_len:
            # Targets ("1AX", "2BY") must occur often enough, so draw them more often than chance would.
            if self.random.uniform() < 0.5:
                text += str(self.random.choice(list("12")))
            if self.random.uniform() < 0.9:
                text += str(self.random.choice(["AX", "BY"]))
            while self.random.uniform() < 0.5:
                text += str(self.random.choice(list(self.input_symbols)))
        return text[:seq_len]

    @classmethod
    def make_output_str(cls, input_str: str) -> str:
        outer, inner, out = "", "", []
        for char in input_str:
            hit = False
            if char in "12":
                outer = char
            elif char in "AB":
                inner = char
            elif char in "XY":
                hit = outer + inner + char in ("1AX", "2BY")
                inner = ""
            out.append("R" if hit else "L")
        return "".join(out)


class TaskEpisodicCopyDataset(_SymbolTask):
    """Episodic copy: 1-9 random symbols, 1-99 blanks, a delimiter; then recall the symbols one by one."""

    input_symbols = " .01234567"
    output_symbols = input_symbols

    def generate_input_str(self) -> str:
        num_chars = self.random.randint(1, 10)
        chars = "".join(str(self.random.choice(list(self.input_symbols[2:]))) for _ in range(num_chars))
        return chars + " " * self.random.randint(1, 100) + "." + "." * (num_chars + 1)

    @classmethod
    def make_output_str(cls, input_str: str) -> str:
        memory, out, recalling = [], [], False
        for char in input_str:
            if recalling:
                out.append(memory.pop(0) if memory else ".")
                continue
            out.append(" ")
            if char == ".":
                recalling = True
            elif char != " ":
                memory.append(char)
        return "".join(out)


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


class TaskNumberBaseConvertDataset(GeneratingDataset):
    """Convert a number from one base to another: sparse digits in, sparse digits out (most significant first).

    :param input_base: the base of ``"data"`` (2..36).
    :param output_base: the base of ``"classes"`` (2..36).
    :param min_input_seq_len: the fewest input digits.
    :param max_input_seq_len: the most input digits.
    """

    def __init__(
        self,
        input_base: int = 8,
        output_base: int = 2,
        min_input_seq_len: int = 1,
        max_input_seq_len: int = 8,
        **kwargs: Any,
    ):
        super().__init__(
            input_dim=input_base, output_dim={"data": (input_base, 1), "classes": (output_base, 1)}, **kwargs
        )
        if not (2 <= input_base <= len(_DIGITS) and 2 <= output_base <= len(_DIGITS)):
            raise DatasetError(
                f"{self}: input_base={input_base} and output_base={output_base} must both be in 2..{len(_DIGITS)}"
            )
        if not 0 < min_input_seq_len <= max_input_seq_len:
            raise DatasetError(
                f"{self}: need 0 < min_input_seq_len <= max_input_seq_len, got {min_input_seq_len} and "
                f"{max_input_seq_len}"
            )
        self.input_base = input_base
        self.output_base = output_base
        self.min_input_seq_len = min_input_seq_len
        self.max_input_seq_len = max_input_seq_len
        self.labels = {"data": list(_DIGITS[:input_base]), "classes": list(_DIGITS[:output_base])}

    def generate_seq(self, seq_idx: int) -> DatasetSeq:
        seq_len = self.random.randint(self.min_input_seq_len, self.max_input_seq_len + 1)
        digits = self.random.randint(0, self.input_base, size=seq_len)
        number = 0
        for digit in digits.tolist():
            number = number * self.input_base + digit
        out = []
        while number:
            number, digit = divmod(number, self.output_base)
            out.append(digit)
        return DatasetSeq(seq_idx, digits, np.array(out[::-1] or [0]))


class CopyTaskDataset(GeneratingDataset):
    """Copy task: ``"data"`` and ``"classes"`` are the same random sparse sequence over ``nsymbols`` symbols.

    The length is uniform in ``[minlen + minlen_epoch_factor * epoch, maxlen + maxlen_epoch_factor * epoch]``.
    """

    def __init__(
        self,
        nsymbols: int,
        minlen: int = 0,
        maxlen: int = 0,
        minlen_epoch_factor: float = 0,
        maxlen_epoch_factor: float = 0,
        **kwargs: Any,
    ):
        super().__init__(input_dim=nsymbols, output_dim={"data": (nsymbols, 1), "classes": (nsymbols, 1)}, **kwargs)
        if not 0 < nsymbols <= 256:
            raise DatasetError(f"{self}: nsymbols must be in 1..256, got {nsymbols}")
        self.nsymbols = nsymbols
        self.minlen = minlen
        self.maxlen = maxlen
        self.minlen_epoch_factor = minlen_epoch_factor
        self.maxlen_epoch_factor = maxlen_epoch_factor

    def generate_seq(self, seq_idx: int) -> DatasetSeq:
        epoch = self.epoch or 1
        minlen = int(self.minlen + self.minlen_epoch_factor * epoch)
        maxlen = int(self.maxlen + self.maxlen_epoch_factor * epoch)
        if not 0 < minlen <= maxlen:
            raise DatasetError(f"{self}: in epoch {epoch}, need 0 < minlen ({minlen}) <= maxlen ({maxlen})")
        seq = self.random.randint(0, self.nsymbols, size=self.random.randint(minlen, maxlen + 1))
        return DatasetSeq(seq_idx, {"data": seq, "classes": seq.copy()})
