"""DataPipelineOptions: reading the config keys, RETURNN's and Mini-RETURNN's forms, and clear errors."""

from __future__ import annotations

import pytest

from returnn.config import Config, declared_options
from returnn.errors import ConfigError
from returnn.torch.data import DataPipelineOptions
from returnn.torch.data.chunking import ChunkingSpec, ChunkStream

_KEYS = (
    "min_seq_length",
    "max_seq_length",
    "chunking_options",
    "chunking",
    "min_chunk_size",
    "context_window",
    "batch_size",
    "max_seqs",
    "batching_drop_last",
    "batch_drop_last",
    "online_shuffle_batches",
    "batching_scope",
    "num_workers_per_gpu",
    "torch_dataloader_opts",
)


def test_every_key_is_declared_and_marked_as_read():
    declared = declared_options()
    assert all(declared[key].section == "Data pipeline" for key in _KEYS)
    config = Config({"batch_size": 5000})
    DataPipelineOptions.from_config(config)
    assert set(_KEYS) <= config.read_keys()


def test_defaults():
    options = DataPipelineOptions.from_config(Config())
    assert options == DataPipelineOptions(batch_size=1, max_seqs=None, drop_last=False, num_workers=None)


def test_parse_takes_the_declared_defaults():
    assert DataPipelineOptions.parse() == DataPipelineOptions.from_config(Config())
    with pytest.raises(TypeError, match="unknown options"):
        DataPipelineOptions.parse(bach_size=5)


def test_from_config_reads_every_key():
    config = Config(
        {
            "batch_size": {"data": 20000, "classes": 500},
            "max_seqs": 128,
            "batch_drop_last": True,
            "min_seq_length": {"classes": 1},
            "max_seq_length": 3000,
            "chunking_options": {
                "chunk_streams": {"data": {"size": 200, "step": 100, "min_chunk_size": 10}, "classes": {"size": 50}},
                "random_chunk_start": True,
            },
            "online_shuffle_batches": {"buffer_size": 100},
            "batching_scope": "shard",
            "num_workers_per_gpu": 2,
            "torch_dataloader_opts": {"prefetch_factor": 4, "pin_memory": True},
        }
    )
    options = DataPipelineOptions.from_config(config)
    assert options == DataPipelineOptions(
        batch_size={"data": 20000, "classes": 500},
        max_seqs=128,
        drop_last=True,
        min_seq_length={"classes": 1},
        max_seq_length=3000,
        chunking=ChunkingSpec(
            streams={"data": ChunkStream(200, 100, 10), "classes": ChunkStream(50, 50, 0)}, random_start=True
        ),
        shuffle_buffer_size=100,
        batching_scope="shard",
        num_workers=2,
        dataloader_opts={"prefetch_factor": 4, "pin_memory": True},
    )


def test_config_files_and_overrides_travel_to_workers(tmp_path):
    path = tmp_path / "exp.config"
    path.write_text("#!rnn.py\nbatch_size = 1000\n")
    config = Config()
    config.parse_cmd_args(["++max_seqs", "-1", "++batch_size", "3000"])
    config.load_file(path)
    options = DataPipelineOptions.from_config(config)
    assert options.config_args == (str(path), "++max_seqs", "+-1", "++batch_size", "3000")
    assert options.batch_size == 3000 and options.max_seqs is None


def test_command_line_strings_are_read_as_literals():
    config = Config()
    config.parse_cmd_args(["++batch_size", "5000", "++chunking", "100:50", "++max_seqs", "64"])
    options = DataPipelineOptions.from_config(config)
    assert (options.batch_size, options.max_seqs) == (5000, 64)
    assert options.chunking == ChunkingSpec(all_keys=ChunkStream(100, 50))


@pytest.mark.parametrize(
    ("chunking", "min_chunk_size", "expected"),
    [
        (100, None, ChunkingSpec(all_keys=ChunkStream(100, 100))),
        ("100:50", 10, ChunkingSpec(all_keys=ChunkStream(100, 50, 10))),
        ((100, 50), None, ChunkingSpec(all_keys=ChunkStream(100, 50))),
        ((100, 0), None, ChunkingSpec(all_keys=ChunkStream(100, 100))),
        ("100:0", None, ChunkingSpec(all_keys=ChunkStream(100, 100))),
        (
            ({"data": 100, "classes": 25}, {"data": 50, "classes": 12}),
            {"data": 20},
            ChunkingSpec(streams={"data": ChunkStream(100, 50, 20), "classes": ChunkStream(25, 12, 0)}),
        ),
        ({"data": 100}, 5, ChunkingSpec(streams={"data": ChunkStream(100, 100, 5)})),
        (0, None, None),
        ("0", None, None),
    ],
)
def test_returnn_chunking_forms(chunking, min_chunk_size, expected):
    assert DataPipelineOptions.parse(chunking=chunking, min_chunk_size=min_chunk_size).chunking == expected


def test_drop_last_alias_conflict():
    with pytest.raises(ConfigError, match="'batching_drop_last' and its alias 'batch_drop_last' disagree"):
        DataPipelineOptions.from_config(Config({"batching_drop_last": True, "batch_drop_last": False}))
    assert DataPipelineOptions.from_config(Config({"batching_drop_last": True})).drop_last


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 5000.0}, r"'batch_size': expected an int or a dict \{data key: int\}, got float 5000.0"),
        ({"batch_size": "big"}, r"'batch_size': expected an int or a dict"),
        ({"batch_size": 0}, r"'batch_size' must be at least 1, got 0"),
        ({"batch_size": {"data": -5}}, r"'batch_size': expected \{data key: int >= 1\}, got entry 'data': -5"),
        ({"batch_size": None}, r"'batch_size' is not set"),
        ({"max_seqs": 0}, r"'max_seqs' must be a positive int or -1"),
        ({"min_seq_length": -1}, r"'min_seq_length' must be at least 0"),
        ({"max_seq_length": [5]}, r"'max_seq_length': expected an int or a dict"),
        (
            {"chunking_options": {"chunk_streams": {"data": {"sise": 100}}}},
            r"chunk_streams\['data'\]: unknown key 'sise'; did you mean 'size'\?.*size is missing",
        ),
        (
            {"chunking_options": {"chunk_streams": {"data": {"size": -100}}}},
            r"chunk_streams\['data'\]: size must be an int >= 1, got -100",
        ),
        (
            {"chunking_options": {"chunk_streams": {"data": {"size": 10, "step": 0}}}},
            r"step must be an int >= 1, got 0",
        ),
        (
            {"chunking_options": {"chunk_streams": {"data": {"size": 10, "min_chunk_size": 20}}}},
            r"min_chunk_size 20 is larger than size 10",
        ),
        ({"chunking_options": {"streams": {}}}, r"unknown keys \['streams'\]"),
        ({"chunking_options": {"chunk_streams": {"data": {"size": 10}}}, "chunking": 10}, r"not both"),
        ({"chunking": "100:50:25"}, r"'chunking': expected 'size' or 'size:step'"),
        ({"chunking": -5}, r"'chunking': size must be an int >= 1, got -5"),
        ({"chunking": ({"data": 10}, {"classes": 5})}, r"the step dict must have the same keys"),
        ({"online_shuffle_batches": {"size": 10}}, r"'online_shuffle_batches': expected \{'buffer_size': int\}"),
        ({"online_shuffle_batches": -3}, r"'online_shuffle_batches': expected a positive int"),
        (
            {"online_shuffle_batches": {"buffer_size": 10, "seed": "x"}},
            r"'online_shuffle_batches': 'seed' must be an int >= 0, got 'x'",
        ),
        ({"num_workers_per_gpu": -1}, r"'num_workers_per_gpu' must be an int >= 0, got -1"),
        ({"batching_scope": "global"}, r"'batching_scope' must be one of 'epoch', 'shard', got 'global'"),
        (
            {"num_workers_per_gpu": 1, "torch_dataloader_opts": {"num_workers": 2}},
            r"torch_dataloader_opts\['num_workers'\] = 2 disagree",
        ),
        (
            {"torch_dataloader_opts": {"shuffle": True}},
            r"torch_dataloader_opts\['shuffle'\] is set by the data pipeline",
        ),
        (
            {"torch_dataloader_opts": {"prefetch_factr": 2}},
            r"torch_dataloader_opts\['prefetch_factr'\] is unknown; did you mean 'prefetch_factor'\?",
        ),
        ({"torch_dataloader_opts": [1]}, r"'torch_dataloader_opts': expected a dict"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        DataPipelineOptions.parse(**options)


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        DataPipelineOptions.parse(batch_size=1.5, max_seqs=-7, chunking=-1)
    assert str(info.value).count(";") == 2
    assert "'batch_size'" in str(info.value) and "'max_seqs'" in str(info.value) and "'chunking'" in str(info.value)


def test_online_shuffle_batches_forms():
    options = DataPipelineOptions.parse(online_shuffle_batches=8)
    assert (options.shuffle_buffer_size, options.shuffle_seed) == (8, None)
    options = DataPipelineOptions.parse(online_shuffle_batches={"buffer_size": 8, "seed": 3})  # RETURNN's dict
    assert (options.shuffle_buffer_size, options.shuffle_seed) == (8, 3)


def test_num_workers_from_torch_dataloader_opts():
    options = DataPipelineOptions.parse(torch_dataloader_opts={"num_workers": 1, "prefetch_factor": 3})
    assert options.num_workers == 1 and options.dataloader_opts == {"prefetch_factor": 3}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        (1, {"data": (0, 0)}),
        (5, {"data": (2, 2)}),
        (4, {"data": (1, 2)}),  # the odd frame on the right
        ({"data": 3, "aux": 2}, {"data": (1, 1), "aux": (0, 1)}),
        (({"data": 2}, {"data": 1, "classes": 0}), {"classes": (0, 0), "data": (2, 1)}),
    ],
)
def test_context_window_forms(value, expected):
    assert DataPipelineOptions.parse(context_window=value).context == expected


def test_context_window_bad_values():
    with pytest.raises(ConfigError, match=r"'context_window': expected an int >= 1 for 'data', got 0"):
        DataPipelineOptions.parse(context_window=0)
    with pytest.raises(ConfigError, match=r"'context_window': expected N, \{key: N\} or"):
        DataPipelineOptions.parse(context_window="5")
