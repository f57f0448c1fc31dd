"""Config: loading files, overrides, typed getters, read tracking and the unknown-key report."""

from __future__ import annotations

import json
import logging
import pickle
import textwrap

import numpy as np
import pytest

from returnn import config_options
from returnn.config import (
    Config,
    declare_options,
    declared_options,
    get_global_config,
    load_config,
    set_global_config,
)
from returnn.errors import ConfigError


@pytest.fixture(autouse=True)
def _forget_test_options():
    """Options that tests declare must not leak into the reference of the real ones."""
    yield
    for name in list(config_options._declared_options):
        if name.startswith("test_"):
            del config_options._declared_options[name]


def write(path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


# ------------------------------------------------------------------------------------------------ loading


def test_load_file_executes_python_with_documented_globals(tmp_path):
    filename = write(
        tmp_path / "exp.config",
        """
        #!rnn.py
        seen_config = config
        seen_file = __file__
        seen_name = __name__
        num_epochs = 3
        """,
    )
    config = Config()
    config.load_file(filename)
    assert config.typed_value("seen_config") is config
    assert config.typed_value("seen_file") == filename
    assert config.typed_value("seen_name") == "__returnn_config__"
    assert config.int("num_epochs") == 3
    assert config.files == [filename]
    assert "__file__" not in config.keys()


@pytest.mark.parametrize("header", ["#!rnn.py", "#!returnn/rnn.py", "#!/usr/bin/env python3"])
def test_headers(tmp_path, header):
    config = Config()
    config.load_file(write(tmp_path / "exp.config", f"{header}\nx = 1\n"))
    assert config.int("x") == 1


def test_py_suffix_without_header(tmp_path):
    config = Config()
    config.load_file(write(tmp_path / "exp.py", "x = [1, 2]\n"))
    assert config.int_list("x") == [1, 2]


def test_not_python_gives_clear_error(tmp_path):
    filename = write(tmp_path / "exp.config", "num_epochs 5\nbatch_size 1000\n")
    with pytest.raises(ConfigError, match=r"is not a Python config .*line 1.*'#!rnn.py'"):
        Config().load_file(filename)


def test_syntax_error_names_file_and_line(tmp_path):
    filename = write(tmp_path / "exp.config", "#!rnn.py\nx = 1\ny = (2,\nz = 3\n")
    with pytest.raises(ConfigError, match=r"syntax error in config file .*exp.config:3"):
        Config().load_file(filename)


def test_runtime_error_names_file_and_line(tmp_path):
    filename = write(tmp_path / "exp.config", "#!rnn.py\nx = 1\ny = undefined_name + 1\n")
    with pytest.raises(ConfigError, match=r"exp.config:3: NameError: name 'undefined_name'"):
        Config().load_file(filename)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.config"):
        Config().load_file(tmp_path / "nope.config")


def test_i6_core_serialized_config(tmp_path):
    """The shape that i6_core's ReturnnConfig writes: header, imports, prolog, json config, locals().update, epilog."""
    (tmp_path / "my_model_code.py").write_text("def train_step(*, model, data, run_ctx, **kwargs):\n    pass\n")
    payload = json.dumps({"batch_size": 20000, "learning_rates": [0.1, 0.2], "train": {"class": "DummyDataset"}})
    filename = write(
        tmp_path / "returnn.config",
        f"""
        #!rnn.py
        import os
        import sys

        from returnn.config import get_global_config

        def _prolog_value():
            return get_global_config().int("num_epochs", 0) * 2

        backend = "torch"
        device = "gpu"
        log = ["./returnn.log"]
        num_epochs = 10
        target = "classes"
        use_horovod = False
        config = {{}}
        import json
        config = json.loads({payload!r})
        locals().update(**config)
        doubled = _prolog_value()

        sys.path.insert(0, os.path.dirname(__file__))
        from my_model_code import train_step
        """,
    )
    config = load_config([filename])
    assert config.int("batch_size") == 20000
    assert config.float_list("learning_rates") == [0.1, 0.2]
    assert config.typed_value("train") == {"class": "DummyDataset"}
    assert config.int("doubled") == 20
    assert callable(config.typed_value("train_step"))
    assert config.value("device") == "gpu"
    assert "target" not in config.unread_user_keys()
    assert "use_horovod" not in config.unread_user_keys()
    assert "config" not in config.unread_user_keys()


def test_config_functions_pickle_by_reference(tmp_path):
    filename = write(tmp_path / "exp.config", "#!rnn.py\ndef double(x):\n    return 2 * x\n")
    config = load_config([filename])
    func = pickle.loads(pickle.dumps(config.typed_value("double")))
    assert func(21) == 42


# ------------------------------------------------------------------------------------------------ overrides


def test_overrides_are_typed_by_existing_value(tmp_path):
    filename = write(
        tmp_path / "exp.config",
        """
        #!rnn.py
        num_epochs = 5
        learning_rate = 0.1
        device = "cpu"
        use_x = False
        max_seq_length = {"data": 100}
        learning_rates = [0.1]
        maybe = None
        """,
    )
    config = load_config(
        [filename]
        + ["++num_epochs", "7", "++learning_rate", "+-0.5", "++device", "gpu", "++use_x", "true"]
        + ["++max_seq_length", "0", "++learning_rates", "[0.3,0.2]", "++maybe", "abc", "++untyped", "1,2"]
    )
    assert config.typed_value("num_epochs") == 7
    assert config.typed_value("learning_rate") == -0.5
    assert config.typed_value("device") == "gpu"
    assert config.typed_value("use_x") is True
    assert config.typed_value("max_seq_length") == 0
    assert config.typed_value("learning_rates") == [0.3, 0.2]
    assert config.typed_value("maybe") == "abc"
    assert config.typed_value("untyped") == "1,2"
    assert config.int_list("untyped") == [1, 2]


def test_overrides_are_visible_while_the_config_executes(tmp_path):
    filename = write(
        tmp_path / "exp.config",
        """
        #!rnn.py
        from returnn.config import get_global_config
        seen = get_global_config().value("task", "train")
        num_epochs = config.int("num_epochs", 1) * 10
        """,
    )
    config = load_config([filename, "++task", "nop", "++num_epochs", "3"])
    assert config.value("seen") == "nop"
    # the file computed 30 from the override, then the override itself wins again
    assert config.int("num_epochs") == 3


def test_override_not_a_literal_of_that_kind(tmp_path):
    filename = write(tmp_path / "exp.config", "#!rnn.py\nnum_epochs = 5\n")
    with pytest.raises(ConfigError, match=r"'\+\+num_epochs five'.*int 5.*not a Python literal"):
        load_config([filename, "++num_epochs", "five"])


def test_override_without_value(tmp_path):
    filename = write(tmp_path / "exp.config", "#!rnn.py\n")
    with pytest.raises(ConfigError, match=r"'\+\+num_epochs' needs a value"):
        load_config([filename, "++num_epochs"])


def test_override_bad_argument(tmp_path):
    filename = write(tmp_path / "exp.config", "#!rnn.py\n")
    with pytest.raises(ConfigError, match=r"unexpected argument 'num_epochs'"):
        load_config([filename, "++a", "1", "num_epochs", "3"])


def test_include_and_config_option(tmp_path):
    """Files of --config and ++include load after the ones given first, in command-line order: later ones win."""
    base = write(tmp_path / "base.config", "#!rnn.py\na = 1\nb = 1\nd = 1\ne = 1\n")
    extra = write(tmp_path / "extra.config", "#!rnn.py\nb = 2\nc = 3\n")
    more = write(tmp_path / "more.config", "#!rnn.py\nd = 4\ne = 4\n")
    config = load_config([base, "--config", extra, "++include", more, "++e", "5"])
    assert [config.int(k) for k in "abcde"] == [1, 2, 3, 4, 5]
    assert config.files == [base, extra, more]


def test_no_config_file():
    with pytest.raises(ConfigError, match="no config file given"):
        load_config(["++task", "nop"])


def test_cmd_args_round_trip(tmp_path):
    filename = write(tmp_path / "exp.config", "#!rnn.py\nx = 1\n")
    config = load_config([filename, "++x", "+-2"])
    again = load_config(config.cmd_args())
    assert again.int("x") == -2


# ------------------------------------------------------------------------------------------------ getters


@pytest.fixture
def config() -> Config:
    return Config(
        {
            "i": 3,
            "f": 0.5,
            "s": "abc",
            "b": True,
            "l": [1, 2, 3],
            "fl": [0.5, 1],
            "d": {"a": 1},
            "n": None,
            "func": len,
        }
    )


def test_int(config):
    assert config.int("i") == 3
    assert config.int("missing", 7) == 7
    assert config.int("missing") is None
    with pytest.raises(ConfigError, match=r"config key 's': expected an int, got 'abc'"):
        config.int("s")
    with pytest.raises(ConfigError, match=r"config key 'b': expected an int, got True"):
        config.int("b")
    with pytest.raises(ConfigError, match=r"config key 'f': expected an int, got 0.5"):
        config.int("f")
    config.update({"np_int": np.int64(4), "whole_float": 8.0})
    config.dict["from_command_line"] = " 12 "
    assert [config.int(key) for key in ("np_int", "whole_float", "from_command_line")] == [4, 8, 12]


def test_float(config):
    assert config.float("f") == 0.5
    assert config.float("i") == 3.0
    with pytest.raises(ConfigError, match=r"config key 'l': expected a number"):
        config.float("l")
    with pytest.raises(ConfigError, match=r"config key 'b': expected a number, got True"):
        config.float("b")
    config.update({"np_float": np.float32(0.25)})
    config.dict["from_command_line"] = "inf"
    assert (config.float("np_float"), config.float("from_command_line")) == (0.25, float("inf"))


def test_bool(config):
    assert config.bool("b") is True
    assert config.bool("missing", False) is False
    config.dict["sb"] = "off"
    assert config.bool("sb") is False
    with pytest.raises(ConfigError, match=r"config key 's': expected a bool"):
        config.bool("s")
    assert config.is_true("b") and not config.is_true("missing")


def test_value_and_typed_value(config):
    assert config.value("s") == "abc"
    assert config.value("l") == "1,2,3"
    assert config.value("l", index=1) == 2
    assert config.value("i") == "3"
    assert config.value("missing", "dflt") == "dflt"
    assert config.typed_value("d") == {"a": 1}
    assert config.opt_typed_value("missing", 5) == 5


def test_lists(config):
    assert config.list("l") == [1, 2, 3]
    assert config.list("s") == ["abc"]
    assert config.list("missing") == []
    assert config.int_list("l") == [1, 2, 3]
    assert config.float_list("fl") == [0.5, 1.0]
    with pytest.raises(ConfigError, match=r"config key 's': expected a list of ints"):
        config.int_list("s")
    with pytest.raises(ConfigError, match=r"config key 'fl': expected a list of ints, got \[0.5, 1\]"):
        config.int_list("fl")
    with pytest.raises(ConfigError, match=r"config key 'd': expected a list of numbers"):
        config.float_list("d")
    assert config.int_pair("i") == (3, 3)
    config.set("pair", [2, 4])
    assert config.int_pair("pair") == (2, 4)
    with pytest.raises(ConfigError, match="pair of ints"):
        config.int_pair("l")


def test_bool_or_other(config):
    config.dict["x"] = "true"
    assert config.bool_or_other("x") is True
    assert config.bool_or_other("d") == {"a": 1}
    assert config.bool_or_other("s") == "abc"


def test_has_set_update_of_type(config):
    assert config.has("i") and not config.has("missing")
    config.set("new", 1)
    config.update({"new": 2, "other": 3})
    assert config.int("new") == 2 and config.int("other") == 3
    assert config.is_typed("new")
    assert config.is_of_type("d", dict) and not config.is_of_type("d", list)
    assert config.get_of_type("d", dict) == {"a": 1}
    with pytest.raises(ConfigError, match=r"config key 'd': expected list or tuple, got dict"):
        config.get_of_type("d", (list, tuple))


def test_callable(config):
    assert config.callable("func") is len
    assert config.callable("missing") is None
    with pytest.raises(ConfigError, match=r"config key 'i': expected a function"):
        config.callable("i")


def test_declared_default_is_used():
    declare_options("Test section", {"test_declared_option_x": (17, "A test option.")})
    assert declared_options()["test_declared_option_x"].default == 17
    assert Config().int("test_declared_option_x") == 17
    assert Config().int("test_declared_option_x", 3) == 3


def test_global_config():
    with pytest.raises(ConfigError, match="no global config"):
        get_global_config()
    assert get_global_config(raise_exception=False) is None
    config = Config()
    set_global_config(config)
    assert get_global_config() is config


# ------------------------------------------------------------------------------------------------ unknown keys


def test_unknown_key_near_miss_is_error():
    declare_options("Test section", {"test_batch_size_like": (1, "A test option.")})
    config = Config({"test_bach_size_like": 5000})
    with pytest.raises(ConfigError, match=r"'test_bach_size_like' \(did you mean 'test_batch_size_like'\?\)"):
        config.check_unknown_keys()


def test_unknown_key_other_is_warning_once_it_is_known_what_was_read(caplog):
    config = Config({"my_hidden_dim": 5, "_private": 1, "helper": print, "Klass": int, "json": json})
    with caplog.at_level(logging.WARNING, logger="returnn"):
        config.check_unknown_keys()  # start-up: only near misses of declared options count
        assert caplog.records == []
        config.report_unread_keys()
        config.report_unread_keys()  # reported once
    assert [r.getMessage() for r in caplog.records] == ["config key 'my_hidden_dim' is set but not used by anything"]


def test_returnn_options_this_trainer_ignores_are_warnings_not_typos(caplog):
    import returnn.torch.data.options  # noqa: F401  (declares batch_size)

    config = Config(
        {"log_batch_size": True, "cache_size": "0", "debug_print_layer_output_shape": True, "bach_size": 5000}
    )
    with pytest.raises(ConfigError, match=r"never read: 'bach_size' \(did you mean 'batch_size'\?\); fix"):
        config.check_unknown_keys()
    del config.typed_dict["bach_size"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="returnn"):
        config.check_unknown_keys()
        config.report_unread_keys()
    assert [r.getMessage() for r in caplog.records] == [
        f"config key {key!r} is a RETURNN option that this trainer does not use; it has no effect"
        for key in ("cache_size", "debug_print_layer_output_shape", "log_batch_size")
    ]


def test_returnn_options_not_used_are_really_not_declared():
    from returnn.tools.config_reference import collect_options

    assert sorted(config_options.RETURNN_KEYS_NOT_USED & set(collect_options())) == []


def test_unknown_key_modes(caplog):
    declare_options("Test section", {"test_batch_size_like": (1, "A test option.")})
    config = Config({"test_bach_size_like": 5000, "config_unknown_keys": "warn"})
    with caplog.at_level(logging.WARNING, logger="returnn"):
        config.check_unknown_keys()
    assert "did you mean 'test_batch_size_like'" in caplog.text
    Config({"test_bach_size_like": 1, "config_unknown_keys": "ignore"}).check_unknown_keys()
    with pytest.raises(ConfigError, match="config_unknown_keys"):
        Config({"config_unknown_keys": "sometimes"}).check_unknown_keys()


def test_read_keys_are_not_reported():
    config = Config({"test_bach_size_like": 5000, "declared_later": 1})
    config.int("test_bach_size_like")
    config.check_unknown_keys()
    assert "test_bach_size_like" in config.read_keys()
    assert config.unread_user_keys() == ["declared_later"]


def test_config_functions_read_the_global_config_when_called(tmp_path):
    filename = write(
        tmp_path / "exp.config",
        """\
        hidden = 7
        def get_hidden():
            return config.int("hidden", 512)
        """,
    )
    config = load_config([filename])
    assert config.typed_value("get_hidden")() == 7
    assert config.typed_value("config") is config
    assert "config" not in config.unread_user_keys()


def test_near_misses_that_config_functions_read_are_not_typos(tmp_path, caplog):
    import returnn.torch.data.options  # noqa: F401  (declares max_seq_length, batch_size)

    filename = write(
        tmp_path / "exp.config",
        """\
        max_seq_len = 300
        dev_batch_size = 1000
        def get_model(**kwargs):
            return config.int("max_seq_len", 0) + config.int("dev_batch_size", 0)
        """,
    )
    config = load_config([filename])
    config.check_unknown_keys()  # no error: get_model reads them when it is called
    assert config.typed_value("get_model")() == 1300
    with caplog.at_level(logging.WARNING, logger="returnn"):
        config.report_unread_keys()
    assert caplog.records == []


def test_near_miss_that_nothing_reads_is_an_error_at_start_up(tmp_path):
    import returnn.torch.data.options  # noqa: F401  (declares max_seq_length)

    filename = write(tmp_path / "exp.config", "max_seq_len = 300\ndef get_model(**kwargs):\n    return None\n")
    with pytest.raises(ConfigError, match=r"'max_seq_len' \(did you mean 'max_seq_length'\?\)"):
        load_config([filename]).check_unknown_keys()


def test_late_warning_names_the_near_miss(caplog):
    config = Config({"my_hiden_dim": 5})
    config.int("my_hidden_dim")
    with caplog.at_level(logging.WARNING, logger="returnn"):
        config.report_unread_keys()
    assert [r.getMessage() for r in caplog.records] == [
        "config key 'my_hiden_dim' is set but not used by anything (did you mean 'my_hidden_dim'?)"
    ]
