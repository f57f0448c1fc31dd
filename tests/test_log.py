"""Logging set-up: targets, verbosity levels, formats and the log.v1..v5 streams."""

from __future__ import annotations

import io
import logging

import pytest

from returnn.config import Config
from returnn.errors import ConfigError
from returnn.log import V4, level_for_verbosity, log


def emit_all_levels() -> None:
    logger = logging.getLogger("returnn.test")
    logger.warning("warn")
    logger.info("info")
    logger.log(V4, "v4")
    logger.debug("debug")


@pytest.mark.parametrize(
    ("verbosity", "expected"),
    [(0, []), (1, ["warn"]), (3, ["warn", "info"]), (4, ["warn", "info", "v4"]), (5, ["warn", "info", "v4", "debug"])],
)
def test_verbosity_levels(verbosity, expected):
    stream = io.StringIO()
    log.initialize(verbosity=[verbosity], stdout=stream)
    emit_all_levels()
    assert stream.getvalue().splitlines() == expected


def test_targets_from_config_each_with_own_verbosity(tmp_path):
    stream = io.StringIO()
    log_file = tmp_path / "sub" / "returnn.log"
    config = Config({"log": ["stdout", str(log_file)], "log_verbosity": [3, 5], "log_format": ["default", "verbose"]})
    log.init_by_config(config, stdout=stream)
    emit_all_levels()
    log.close()
    assert stream.getvalue().splitlines() == ["warn", "info"]
    lines = log_file.read_text().splitlines()
    assert len(lines) == 4
    assert lines[3].endswith("DEBUG returnn.test: debug")


def test_per_target_options_from_the_command_line(tmp_path):
    """Keys that only the command line sets arrive as strings: '++log_verbosity 3,5' gives one level per target."""
    stream = io.StringIO()
    config = Config()
    log_file = tmp_path / "returnn.log"
    config.parse_cmd_args(["++log", f"stdout,{log_file}", "++log_verbosity", "1,5", "++log_format", "raw,timed"])
    log.init_by_config(config, stdout=stream)
    emit_all_levels()
    log.close()
    assert stream.getvalue().splitlines() == ["warn"]
    lines = log_file.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["warn", "info", "v4", "debug"]


def test_v_streams_for_configs_that_print_to_them():
    stream = io.StringIO()
    log.initialize(verbosity=[4], stdout=stream)
    print("to v4", file=log.v4)
    print("to v5", file=log.v5)
    log.v3.write("partial ")
    log.v3.write("line\n")
    assert stream.getvalue().splitlines() == ["to v4", "partial line"]


def test_bad_format_and_target(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'log_format': unknown format 'fancy'"):
        log.initialize(logs=["stdout", "stdout"], formatter=["default", "fancy"])
    assert not log.initialized  # no target was set up
    with pytest.raises(ConfigError, match="pipe targets"):
        log.initialize(logs=["|gzip > x"])
    with pytest.raises(ConfigError, match="log_verbosity"):
        log.init_by_config(Config({"log_verbosity": "loud"}))


def test_level_for_verbosity_clamps():
    assert level_for_verbosity(9) == logging.DEBUG
    assert level_for_verbosity(-1) == logging.ERROR


def test_non_main_rank_logs_only_warnings_with_prefix():
    stream = io.StringIO()
    log.initialize(verbosity=[5], stdout=stream)
    log.quiet_non_main_rank(1)
    log.quiet_non_main_rank(1)  # idempotent: one prefix
    emit_all_levels()
    assert stream.getvalue().splitlines() == ["rank 1: warn"]


def test_main_rank_is_not_quieted():
    stream = io.StringIO()
    log.initialize(verbosity=[3], stdout=stream)
    log.quiet_non_main_rank(0)
    emit_all_levels()
    assert stream.getvalue().splitlines() == ["warn", "info"]
