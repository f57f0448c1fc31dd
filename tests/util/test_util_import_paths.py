"""The import paths and helpers that configs and scripts of RETURNN and Mini-RETURNN use."""

from __future__ import annotations

import getpass
import importlib.util
import logging
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_util_basic_helpers():
    from returnn.util.basic import BehaviorVersion, NumbersDict, get_login_username

    assert get_login_username() == getpass.getuser()
    BehaviorVersion.set(21)
    assert BehaviorVersion.get() == 21 and BehaviorVersion.is_set()
    total = NumbersDict({"data": 3}) + NumbersDict({"data": 1, "classes": 2})
    assert total == NumbersDict({"data": 4, "classes": 2})
    scaled = NumbersDict({"data": 4, "classes": 2}) * 2 / NumbersDict({"data": 8, "classes": 2})
    assert scaled == NumbersDict({"data": 1.0, "classes": 2.0})
    assert (total.max_value(), total.min_value(), NumbersDict(5)["any"]) == (4, 2, 5)


def test_mini_returnn_hdf_writer_path_is_the_same_class():
    from returnn.datasets.util import hdf, hdf_writer

    assert hdf.SimpleHDFWriter is hdf_writer.SimpleHDFWriter
    assert hdf.HDFDatasetWriter is hdf_writer.HDFDatasetWriter


def test_log_initialize_propagate(caplog):
    from returnn.log import log

    log.initialize(verbosity=[5], propagate=True)
    with caplog.at_level(logging.INFO):
        logging.getLogger("returnn.test").info("reaches the root logger")
    assert "reaches the root logger" in caplog.text


def test_init_config_as_scripts_call_it(tmp_path):
    import returnn.__main__ as rnn
    from returnn.config import get_global_config

    filename = tmp_path / "exp.config"
    filename.write_text("#!rnn.py\nnum_epochs = 3\nbatch_size = 100\n")
    config = rnn.init_config(
        str(filename), ["++num_epochs", "4"], default_config={"batch_size": 5, "log": []}, extra_updates={"x": 1}
    )
    assert config is get_global_config() is rnn.config
    assert (config.int("num_epochs"), config.int("batch_size"), config.list("log"), config.int("x")) == (4, 100, [], 1)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "tools").glob("*.py")), ids=lambda p: p.name)
def test_tools_import_without_running(path):
    spec = importlib.util.spec_from_file_location(f"tool_{path.stem.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a tool that runs on import would exit or fail here
    assert callable(module.main)
