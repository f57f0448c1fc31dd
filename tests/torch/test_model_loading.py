"""preload_from_files (every option) and where a task starts."""

from __future__ import annotations

import logging

import pytest
import torch

from returnn.config import Config
from returnn.errors import CheckpointError, ConfigError
from returnn.torch import checkpoints
from returnn.torch.engine import Engine
from returnn.torch.model_loading import PreloadSpec, apply_preload_from_files, checkpoint_for_task, train_start_point


class Pair(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(2, 2)
        self.decoder = torch.nn.Linear(2, 2)


def _filled(model: torch.nn.Module, value: float) -> torch.nn.Module:
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(value)
    return model


def _save(path, state: dict, **extra) -> str:
    torch.save({"model": state, "epoch": 1, "step": 3, **extra}, path)
    return str(path)


def _load(path: str) -> dict:
    return checkpoints.load_checkpoint(path)


def _values(model: torch.nn.Module) -> dict[str, float]:
    return {name: param.flatten()[0].item() for name, param in model.named_parameters()}


def _preload(model, **entries) -> None:
    specs = PreloadSpec.list_from_config(Config({"preload_from_files": entries}))
    apply_preload_from_files(model, specs, for_train=False, load=_load)


def test_prefix_loads_submodule_from_checkpoint_names(tmp_path):
    source = _save(tmp_path / "enc.pt", _filled(torch.nn.Linear(2, 2), 1.0).state_dict())
    model = _filled(Pair(), 0.0)
    _preload(model, enc={"filename": source, "prefix": "encoder."})
    assert _values(model) == {"encoder.weight": 1.0, "encoder.bias": 1.0, "decoder.weight": 0.0, "decoder.bias": 0.0}


def test_order_by_name_later_wins_and_ignore_params(tmp_path):
    ones = _save(tmp_path / "ones.pt", _filled(Pair(), 1.0).state_dict())
    twos = _save(tmp_path / "twos.pt", _filled(Pair(), 2.0).state_dict())
    model = _filled(Pair(), 0.0)
    _preload(
        model,
        b_second={"filename": twos, "ignore_params": ["decoder.bias"], "ignore_params_prefixes": ["encoder."]},
        a_first={"filename": ones},
    )
    assert _values(model) == {"encoder.weight": 1.0, "encoder.bias": 1.0, "decoder.weight": 2.0, "decoder.bias": 1.0}


def test_var_name_mapping_checkpoint_key_and_ignore_missing(tmp_path):
    state = {"enc.w": torch.full((2, 2), 3.0), "enc.b": torch.full((2,), 4.0)}
    path = tmp_path / "raw.pt"
    torch.save({"params": state}, path)
    model = _filled(Pair(), 0.0)
    mapping = {"encoder.weight": "enc.w", "encoder.bias": "enc.b"}
    entry = {"filename": str(path), "checkpoint_key": "params", "var_name_mapping": mapping}
    with pytest.raises(CheckpointError, match=r"preload_from_files\['x'\]: '.*raw.pt' lacks parameters for decoder"):
        _preload(model, x=entry)
    _preload(model, x={**entry, "ignore_missing": True})
    assert _values(model) == {"encoder.weight": 3.0, "encoder.bias": 4.0, "decoder.weight": 0.0, "decoder.bias": 0.0}
    whole_file = tmp_path / "whole.pt"
    torch.save(_filled(Pair(), 5.0).state_dict(), whole_file)
    _preload(model, x={"filename": str(whole_file), "checkpoint_key": None})
    assert set(_values(model).values()) == {5.0}


def test_init_for_train_entries_apply_only_to_a_new_training(tmp_path):
    ones = _save(tmp_path / "ones.pt", _filled(Pair(), 1.0).state_dict())
    twos = _save(tmp_path / "twos.pt", _filled(Pair(), 2.0).state_dict())
    config = Config(
        {"preload_from_files": {"train": {"filename": ones, "init_for_train": True}, "rec": {"filename": twos}}}
    )
    specs = PreloadSpec.list_from_config(config)
    model = _filled(Pair(), 0.0)
    apply_preload_from_files(model, specs, for_train=True, load=_load)
    assert set(_values(model).values()) == {1.0}
    apply_preload_from_files(model, specs, for_train=False, load=_load)
    assert set(_values(model).values()) == {2.0}


@pytest.mark.parametrize(
    "value, match",
    [
        ([1], r"expected a dict \{name: options\}"),
        ({"a": {"prefix": "x"}}, r"entry 'a': expected a dict with 'filename'"),
        (
            {"a": {"filename": "f", "prefixx": "x"}},
            r"entry 'a': unknown option\(s\) 'prefixx'; choose from: \['filename'",
        ),
    ],
)
def test_bad_preload_options(value, match):
    with pytest.raises(ConfigError, match=match):
        PreloadSpec.list_from_config(Config({"preload_from_files": value}))


def test_preload_shape_mismatch_and_missing_key(tmp_path):
    path = _save(tmp_path / "small.pt", {"encoder.weight": torch.zeros(1, 2)})
    with pytest.raises(
        CheckpointError, match=r"shapes differ for encoder.weight \(checkpoint \[1, 2\], model \[2, 2\]\)"
    ):
        _preload(Pair(), x={"filename": path, "ignore_missing": True})
    with pytest.raises(
        CheckpointError, match=r"has no entry 'weights' \(it has: model, epoch, step\); set 'checkpoint_"
    ):
        _preload(Pair(), x={"filename": path, "checkpoint_key": "weights"})


def test_preload_in_forward_after_load(make_config, tmp_path):
    Engine(make_config(num_epochs=1)).train()
    out_bias = torch.full((3,), 7.0)
    extra = _save(tmp_path / "out.pt", {"bias": out_bias, "weight": torch.zeros(3, 8)})
    seen = []

    def forward_step(*, model, data, run_ctx, **kwargs):
        seen.append(model.out.bias.tolist())

    config = make_config(
        load=str(tmp_path / "models" / "epoch.001.pt"),
        forward=make_config().typed_value("dev"),
        forward_step=forward_step,
        preload_from_files={"out": {"filename": extra, "prefix": "out."}},
    )
    Engine(config).forward()
    assert seen == [[7.0, 7.0, 7.0]]


def test_train_start_points(tmp_path):
    def config(**items):
        return Config({"model": str(tmp_path / "epoch"), **items})

    assert train_start_point(config(), _load).kind == "fresh"
    assert train_start_point(config(start_epoch=1), _load).epoch == 1
    with pytest.raises(ConfigError, match=r"'start_epoch': expected 'auto' or an int >= 1, got 0"):
        train_start_point(config(start_epoch=0), _load)
    loaded = _save(tmp_path / "other.pt", {})
    start = train_start_point(config(load=loaded), _load)
    assert (start.kind, start.epoch, start.step, start.optimizer_file) == ("load", 2, 3, None)
    assert train_start_point(config(load=loaded, start_epoch=5), _load).epoch == 5  # not 6
    _save(tmp_path / "epoch.000.pt", {})
    start = train_start_point(config(load=loaded), _load)  # an existing epoch wins over 'load'
    assert (start.kind, start.epoch, start.optimizer_file) == ("resume", 2, None)
    assert train_start_point(config(start_epoch=1), _load).kind == "fresh"


def test_checkpoint_for_task(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="returnn")
    prefix = str(tmp_path / "epoch")
    for epoch in (1, 2):
        torch.save({"model": {}, "epoch": epoch, "step": epoch * 10}, checkpoints.checkpoint_filename(prefix, epoch))
    newest = checkpoint_for_task(Config({"model": prefix}), "forward", _load)
    assert (newest.epoch, newest.step, newest.kind) == (2, 20, "checkpoint")
    assert "task=forward: using the newest checkpoint" in caplog.text
    assert checkpoint_for_task(Config({"model": prefix, "load_epoch": 1}), "eval", _load).step == 10
    load = checkpoint_for_task(Config({"model": prefix, "load": prefix + ".001"}), "eval", _load)
    assert load.checkpoint == prefix + ".001.pt"
    path_object = checkpoint_for_task(Config({"load": tmp_path / "epoch.002.pt"}), "eval", _load)  # os.PathLike
    assert path_object.checkpoint == prefix + ".002.pt"
    with pytest.raises(ConfigError, match=r"config key 'load': expected a file path, got int 3"):
        checkpoint_for_task(Config({"load": 3}), "eval", _load)
    random_init = checkpoint_for_task(Config({"allow_random_model_init": True}), "forward", _load)
    assert (random_init.kind, random_init.epoch, random_init.content) == ("random", 0, None)
