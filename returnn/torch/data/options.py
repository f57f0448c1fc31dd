"""The data-pipeline options: the one place where the pipeline's config keys are declared, read and validated.

:meth:`DataPipelineOptions.from_config` reads the keys; :meth:`DataPipelineOptions.parse` checks raw values and
reports every problem at once in one :class:`~returnn.errors.ConfigError`. The stages get plain, checked values.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from returnn.config import declare_options
from returnn.errors import ConfigError
from returnn.torch.data.batching import BatchSize
from returnn.torch.data.chunking import ChunkingSpec, ChunkStream
from returnn.torch.data.filter import LengthLimit

if TYPE_CHECKING:
    from returnn.config import Config

__all__ = ["DataPipelineOptions"]

_OPTIONS = {
    "batch_size": (
        1,
        "Maximum padded size of a batch (longest sequence x number of sequences): an int for every key, or "
        "{key: int}. A longer single sequence forms a batch of its own.",
    ),
    "max_seqs": (-1, "Maximum number of sequences per batch; -1 for no limit."),
    "batching_drop_last": (False, "Drop the last batch of each epoch in training (alias: batch_drop_last)."),
    "batch_drop_last": (None, "Alias of batching_drop_last (Mini-RETURNN's name)."),
    "min_seq_length": (
        None,
        "Drop sequences shorter than this (an int for every key, or {key: int}; keys not in the data are "
        "ignored). Not applied when forwarding.",
    ),
    "max_seq_length": (None, "Drop sequences longer than this (like min_seq_length)."),
    "chunking_options": (
        None,
        'Mini-RETURNN\'s chunking: {"chunk_streams": {key: {"size": int, "step": int (default size), '
        '"min_chunk_size": int (default 0)}}, "random_chunk_start": bool}. Not applied when forwarding.',
    ),
    "chunking": (
        None,
        'RETURNN\'s chunking: size, "size:step", (size, step) or ({key: size}, {key: step}); 0 disables it. '
        "An int or a string chunks every key with a time axis alike.",
    ),
    "min_chunk_size": (None, "With chunking: drop chunks shorter than this (int, or {key: int}); default 0."),
    "context_window": (
        None,
        "RETURNN's context frames around each chunk (or, without chunking, each sequence), zeros beyond the "
        "sequence: N (for 'data'; N - 1 frames, the odd one on the right), {key: N}, or ({key: left}, {key: right}).",
    ),
    "online_shuffle_batches": (
        None,
        'Shuffle batches through a buffer of this many batches in training (int, or {"buffer_size": int, '
        '"seed": int}; the seed is combined with the epoch and shard).',
    ),
    "batching_scope": (
        "epoch",
        '"epoch": batches are formed on the whole epoch\'s order (also drop_last, the online shuffle, the chunk '
        "starts) and dealt to the processes and workers, batch i to shard i mod n: the same batches whatever "
        "their number (each shard learns every sequence's length: from the index of an HDFDataset, reading only "
        'its own batches\' sequences; from the data of other datasets). "shard": each shard reads, batches and '
        "shuffles only its own sequences (less reading; the batches depend on the number of shards, and the "
        "dataset must support sharding).",
    ),
    "num_workers_per_gpu": (
        None,
        "DataLoader worker processes per device; 0 loads in the main process. Default: 0 on CPU (a worker "
        "competes with training for the cores), 1 on CUDA (it overlaps loading with GPU compute).",
    ),
    "torch_dataloader_opts": (
        None,
        "Extra torch DataLoader arguments, e.g. {'prefetch_factor': 4, 'pin_memory': True}; "
        "'num_workers' is the same as num_workers_per_gpu.",
    ),
}
declare_options("Data pipeline", _OPTIONS)


# the keys that parse() reads besides the drop_last pair
_PARSED_KEYS = (
    "batch_size",
    "max_seqs",
    "min_seq_length",
    "max_seq_length",
    "chunking_options",
    "chunking",
    "min_chunk_size",
    "context_window",
    "online_shuffle_batches",
    "batching_scope",
    "num_workers_per_gpu",
    "torch_dataloader_opts",
)


def _default(key: str) -> Any:
    """The declared default of an option (its one home)."""
    return _OPTIONS[key][0]


# DataLoader arguments a config may set; the others are the pipeline's own.
_DATALOADER_PASSTHROUGH = (
    "num_workers",
    "prefetch_factor",
    "pin_memory",
    "pin_memory_device",
    "timeout",
    "persistent_workers",
    "multiprocessing_context",
    "in_order",
)
_DATALOADER_OWNED = {
    "batch_size": "batch_size",
    "shuffle": "online_shuffle_batches or the dataset's seq_ordering",
    "sampler": "the dataset's seq_ordering",
    "batch_sampler": "batch_size / max_seqs",
    "collate_fn": "the pipeline's collation",
    "drop_last": "batching_drop_last",
    "worker_init_fn": "the dataset",
    "generator": "the dataset's seq_ordering",
}


@dataclass(frozen=True)
class DataPipelineOptions:
    """Checked pipeline options (see the config reference for the keys).

    :param num_workers: DataLoader workers per device; None picks by device (see ``default_num_workers``).
    :param dataloader_opts: further DataLoader arguments from ``torch_dataloader_opts`` (without num_workers).
    :param config_args: the config's command line (``Config.cmd_args()``); spawned workers rebuild the config from
        it before they unpickle the dataset, so that functions and classes defined in the config resolve.
    """

    batch_size: BatchSize
    max_seqs: int | None = None
    drop_last: bool = False
    min_seq_length: LengthLimit = None
    max_seq_length: LengthLimit = None
    chunking: ChunkingSpec | None = None
    context: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    shuffle_buffer_size: int | None = None
    shuffle_seed: int | None = None
    batching_scope: str = "epoch"
    num_workers: int | None = None
    dataloader_opts: Mapping[str, Any] = field(default_factory=dict)
    config_args: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> DataPipelineOptions:
        """Read and check the pipeline's keys (see the module docstring)."""
        drop_last = config.bool("batching_drop_last")
        alias = config.typed_value("batch_drop_last")
        problems = []
        if alias is not None:
            alias = config.bool("batch_drop_last")
            if config.has("batching_drop_last") and alias != drop_last:
                problems.append("'batching_drop_last' and its alias 'batch_drop_last' disagree; set only one")
            drop_last = alias
        return cls.parse(
            **{key: _literal(config.typed_value(key)) for key in _PARSED_KEYS},
            drop_last=drop_last,
            config_args=tuple(config.cmd_args()) if config.files else (),
            problems=problems,
        )

    @classmethod
    def parse(
        cls, *, config_args: tuple[str, ...] = (), problems: list[str] | None = None, **raw: Any
    ) -> DataPipelineOptions:
        """Check raw config values and build the options.

        :param raw: values named like the config keys (``drop_last`` for ``batching_drop_last``); a key not given
            takes its declared default.
        :param problems: problems :meth:`from_config` found already; they are reported together with these.
        :raises ConfigError: listing every problem found.
        """
        unknown = sorted(set(raw) - set(_PARSED_KEYS) - {"drop_last"})
        if unknown:
            raise TypeError(f"DataPipelineOptions.parse: unknown options {unknown}")
        drop_last = raw.pop("drop_last", _default("batching_drop_last"))
        values = {key: raw.get(key, _default(key)) for key in _PARSED_KEYS}
        problems = list(problems or [])
        shuffle_buffer_size, shuffle_seed = _online_shuffle_batches(values["online_shuffle_batches"], problems)
        options = cls(
            batch_size=_batch_size(values["batch_size"], problems),
            max_seqs=_max_seqs(values["max_seqs"], problems),
            drop_last=bool(drop_last),
            min_seq_length=_length_limit("min_seq_length", values["min_seq_length"], problems),
            max_seq_length=_length_limit("max_seq_length", values["max_seq_length"], problems),
            chunking=_chunking(values["chunking_options"], values["chunking"], values["min_chunk_size"], problems),
            context=_context_window(values["context_window"], problems),
            shuffle_buffer_size=shuffle_buffer_size,
            shuffle_seed=shuffle_seed,
            batching_scope=_batching_scope(values["batching_scope"], problems),
            num_workers=_num_workers(values["num_workers_per_gpu"], values["torch_dataloader_opts"], problems),
            dataloader_opts=_dataloader_opts(values["torch_dataloader_opts"], problems),
            config_args=tuple(config_args),
        )
        if problems:
            raise ConfigError("data pipeline options: " + "; ".join(problems))
        return options


def _literal(value: Any) -> Any:
    """Values of keys given only on the command line arrive as strings: read them as Python literals."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_dict(key: str, value: Any, minimum: int, problems: list[str]) -> int | dict[str, int] | None:
    """An int >= minimum, or {str: int >= minimum}."""
    if _is_int(value):
        if value < minimum:
            problems.append(f"'{key}' must be at least {minimum}, got {value}")
        return value
    if isinstance(value, Mapping):
        result = {}
        for sub_key, limit in value.items():
            if not isinstance(sub_key, str) or not _is_int(limit) or limit < minimum:
                problems.append(f"'{key}': expected {{data key: int >= {minimum}}}, got entry {sub_key!r}: {limit!r}")
            else:
                result[sub_key] = limit
        return result
    problems.append(f"'{key}': expected an int or a dict {{data key: int}}, got {type(value).__name__} {value!r}")
    return None


def _batch_size(value: Any, problems: list[str]) -> BatchSize:
    if value is None:
        problems.append("'batch_size' is not set; give the maximum padded frames per batch, e.g. batch_size = 20000")
        return 1
    result = _int_or_dict("batch_size", value, 1, problems)
    if isinstance(result, dict) and not result and not problems:
        problems.append("'batch_size' is an empty dict; give at least one {data key: limit}")
    return result if result is not None else 1


def _max_seqs(value: Any, problems: list[str]) -> int | None:
    if value is None or value == -1:
        return None
    if not _is_int(value) or value < 1:
        problems.append(f"'max_seqs' must be a positive int or -1 (no limit), got {value!r}")
        return None
    return value


def _length_limit(key: str, value: Any, problems: list[str]) -> LengthLimit:
    return None if value is None else _int_or_dict(key, value, 0, problems)


def _context_window(value: Any, problems: list[str]) -> dict[str, tuple[int, int]]:
    """``{key: (left, right)}`` from RETURNN's forms (see the declaration)."""

    def split(key: str, frames: Any) -> tuple[int, int]:
        if not _is_int(frames) or frames < 1:
            problems.append(f"'context_window': expected an int >= 1 for {key!r}, got {frames!r}")
            return 0, 0
        return (frames - 1) // 2, (frames - 1) - (frames - 1) // 2

    if value is None:
        return {}
    if _is_int(value):
        return {"data": split("data", value)}
    if isinstance(value, Mapping):
        return {key: split(key, frames) for key, frames in value.items()}
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(side, Mapping) for side in value):
        left, right = value
        bad = [(k, v) for side in value for k, v in side.items() if not _is_int(v) or v < 0]
        if bad:
            problems.append(f"'context_window': frames must be ints >= 0, got {bad}")
            return {}
        return {key: (left.get(key, 0), right.get(key, 0)) for key in sorted(set(left) | set(right))}
    problems.append(f"'context_window': expected N, {{key: N}} or ({{key: left}}, {{key: right}}), got {value!r}")
    return {}


def _online_shuffle_batches(value: Any, problems: list[str]) -> tuple[int | None, int | None]:
    """(buffer size, seed) from an int or RETURNN's ``{"buffer_size": int, "seed": int}`` (seed optional)."""
    if value is None or value is False or value == 0:
        return None, None
    seed = None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"buffer_size", "seed"})
        if unknown or "buffer_size" not in value:
            problems.append(
                f"'online_shuffle_batches': expected {{'buffer_size': int}} (and optionally 'seed': int), "
                f"got {dict(value)!r}"
            )
            return None, None
        seed = value.get("seed")
        if seed is not None and (not _is_int(seed) or seed < 0):
            problems.append(f"'online_shuffle_batches': 'seed' must be an int >= 0, got {seed!r}")
            seed = None
        value = value["buffer_size"]
    if not _is_int(value) or value < 1:
        problems.append(f"'online_shuffle_batches': expected a positive int (batches in the buffer), got {value!r}")
        return None, None
    return value, seed


BATCHING_SCOPES = ("epoch", "shard")


def _batching_scope(value: Any, problems: list[str]) -> str:
    if value is None:
        return "epoch"
    if value not in BATCHING_SCOPES:
        problems.append(f"'batching_scope' must be one of {', '.join(map(repr, BATCHING_SCOPES))}, got {value!r}")
        return "epoch"
    return value


def _num_workers(value: Any, dataloader_opts: Any, problems: list[str]) -> int | None:
    if isinstance(dataloader_opts, Mapping) and "num_workers" in dataloader_opts:
        from_opts = dataloader_opts["num_workers"]
        if value is not None and value != from_opts:
            problems.append(
                f"'num_workers_per_gpu' = {value!r} and torch_dataloader_opts['num_workers'] = {from_opts!r} "
                "disagree; set only one"
            )
        value = from_opts
    if value is not None and (not _is_int(value) or value < 0):
        problems.append(f"'num_workers_per_gpu' must be an int >= 0, got {value!r}")
        return None
    return value


def _dataloader_opts(value: Any, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"'torch_dataloader_opts': expected a dict, got {type(value).__name__} {value!r}")
        return {}
    result = {}
    for key, item in value.items():
        if key in _DATALOADER_OWNED:
            problems.append(
                f"torch_dataloader_opts[{key!r}] is set by the data pipeline; use {_DATALOADER_OWNED[key]} instead"
            )
        elif key not in _DATALOADER_PASSTHROUGH:
            close = difflib.get_close_matches(str(key), _DATALOADER_PASSTHROUGH, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                f"torch_dataloader_opts[{key!r}] is unknown; {hint}choose from {', '.join(_DATALOADER_PASSTHROUGH)}"
            )
        elif key != "num_workers":
            result[key] = item
    return result


def _chunking(mini: Any, returnn: Any, min_chunk_size: Any, problems: list[str]) -> ChunkingSpec | None:
    if returnn in (None, 0, "0", "", False):
        returnn = None
    if mini is not None and returnn is not None:
        problems.append("set either 'chunking_options' (Mini-RETURNN) or 'chunking' (RETURNN), not both")
        return None
    if mini is not None:
        if min_chunk_size is not None:
            problems.append("'min_chunk_size' belongs to 'chunking'; with 'chunking_options' set it per chunk stream")
        return _chunking_options(mini, problems)
    if returnn is not None:
        return _returnn_chunking(returnn, min_chunk_size, problems)
    return None


_STREAM_KEYS = ("size", "step", "min_chunk_size")


def _chunking_options(value: Any, problems: list[str]) -> ChunkingSpec | None:
    where = "'chunking_options'"
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected a dict with 'chunk_streams', got {type(value).__name__} {value!r}")
        return None
    unknown = sorted(set(value) - {"chunk_streams", "random_chunk_start"})
    if unknown:
        problems.append(f"{where}: unknown keys {unknown}; choose from 'chunk_streams', 'random_chunk_start'")
    streams_value = value.get("chunk_streams")
    if not isinstance(streams_value, Mapping) or not streams_value:
        problems.append(f"{where}: 'chunk_streams' must be a non-empty dict {{data key: {{'size': int, ...}}}}")
        return None
    random_start = value.get("random_chunk_start", False)
    if not isinstance(random_start, bool):
        problems.append(f"{where}: 'random_chunk_start' must be True or False, got {random_start!r}")
    streams = {}
    for key, spec in streams_value.items():
        stream = _chunk_stream(f"{where} chunk_streams[{key!r}]", spec, problems)
        if stream is not None:
            streams[key] = stream
    return ChunkingSpec(streams=streams, random_start=random_start is True)


def _chunk_stream(where: str, spec: Any, problems: list[str]) -> ChunkStream | None:
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: expected a dict {{'size': int, 'step': int, 'min_chunk_size': int}}, got {spec!r}")
        return None
    for key in spec:
        if key not in _STREAM_KEYS:
            close = difflib.get_close_matches(str(key), _STREAM_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(f"{where}: unknown key {key!r}; {hint}choose from {', '.join(_STREAM_KEYS)}")
    return _make_stream(where, spec.get("size"), spec.get("step"), spec.get("min_chunk_size"), problems)


def _make_stream(where: str, size: Any, step: Any, min_chunk_size: Any, problems: list[str]) -> ChunkStream | None:
    checks = [("size", size, 1), ("step", step, 1), ("min_chunk_size", min_chunk_size, 0)]
    ok = True
    for name, value, minimum in checks:
        if value is not None and (not _is_int(value) or value < minimum):
            problems.append(f"{where}: {name} must be an int >= {minimum}, got {value!r}")
            ok = False
    if size is None:
        problems.append(f"{where}: size is missing")
        ok = False
    step = size if step is None else step
    min_chunk_size = 0 if min_chunk_size is None else min_chunk_size
    if ok and min_chunk_size > size:
        problems.append(
            f"{where}: min_chunk_size {min_chunk_size} is larger than size {size}, so every chunk is dropped"
        )
        ok = False
    return ChunkStream(size, step, min_chunk_size) if ok else None


def _returnn_chunking(value: Any, min_chunk_size: Any, problems: list[str]) -> ChunkingSpec | None:
    """RETURNN's forms: size, "size:step", (size, step), {key: size}, ({key: size}, {key: step})."""
    where = "'chunking'"
    if isinstance(value, str):
        try:
            numbers = tuple(int(part) for part in value.split(":"))
        except ValueError:
            numbers = ()
        if len(numbers) not in (1, 2):
            problems.append(f"{where}: expected 'size' or 'size:step' with ints, got {value!r}")
            return None
        value = numbers if len(numbers) == 2 else numbers[0]
    size, step = value if isinstance(value, (tuple, list)) and len(value) == 2 else (value, None)
    if _is_int(step) and step == 0:
        step = None  # RETURNN reads a step of 0 as "step = size"
    if isinstance(size, Mapping):
        steps = step if step is not None else size
        mins = min_chunk_size if isinstance(min_chunk_size, Mapping) else {}
        if not isinstance(steps, Mapping) or set(steps) != set(size):
            problems.append(f"{where}: the step dict must have the same keys as the size dict, got {value!r}")
            return None
        streams = {}
        for key in size:
            key_min = mins.get(key, None if isinstance(min_chunk_size, Mapping) else min_chunk_size)
            stream = _make_stream(f"{where}[{key!r}]", size[key], steps[key], key_min, problems)
            if stream is not None:
                streams[key] = stream
        return ChunkingSpec(streams=streams)
    if isinstance(min_chunk_size, Mapping):
        problems.append("'min_chunk_size' as a dict needs 'chunking' as ({key: size}, {key: step})")
        return None
    stream = _make_stream(where, size, step, min_chunk_size, problems)
    return ChunkingSpec(all_keys=stream) if stream is not None else None
