"""The config: Python files executed into one namespace, ``++key value`` overrides, typed getters.

A config file is plain Python. It runs with the globals ``config`` (the :class:`Config`), ``__file__`` and
``__name__ = "__returnn_config__"``; every global it leaves behind becomes a config key, and ``config`` stays in the
namespace, so config functions can read options when they are called. Getters record which keys were read, so that
keys set by the user and never read (typos such as ``bach_size``) can be reported (see
:meth:`Config.check_unknown_keys` and :meth:`Config.report_unread_keys`).

Options are declared next to the code that reads them with :func:`declare_options` (see
:mod:`returnn.config_options`): the declarations give each option its default and its documentation, and they are
the set of known keys for "did you mean" suggestions.
"""

from __future__ import annotations

import ast
import logging
import numbers
import os
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from returnn.config_options import (
    PIPELINE_INJECTED_KEYS,
    ConfigOption,
    closest_known_key,
    declare_options,
    declared_option,
    declared_options,
    returnn_key_not_used,
)
from returnn.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "Config",
    "ConfigOption",
    "declare_options",
    "declared_options",
    "get_global_config",
    "load_config",
    "set_global_config",
]

declare_options(
    "General",
    {
        "task": (
            "train",
            "What to run: train, eval, forward, initialize_model, cleanup_old_models, nop, config:<name>.",
        ),
        "config_unknown_keys": (
            "error",
            'What to do with keys that are set but never read: "error" (near misses of known keys are errors, '
            'the rest warnings), "warn" (only warnings) or "ignore".',
        ),
    },
)

_UNSET = object()


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0", "none", ""):
            return False
    raise ConfigError(f"config key {key!r}: expected a bool (True/False), got {value!r}")


# --------------------------------------------------------------------------------------------------
# Config


class Config:
    """Holds the config keys.

    ``typed_dict`` holds Python values (from config files and typed overrides); ``dict`` holds strings (from the
    command line, for keys that no config file defines).
    """

    MODULE_NAME = "__returnn_config__"

    def __init__(self, items: dict[str, Any] | None = None):
        # Config files execute in the namespace of a module, so that functions and classes they define can be
        # pickled by reference (DataLoader worker processes rebuild the config with :func:`load_config`).
        self.module = types.ModuleType(self.MODULE_NAME)
        self.typed_dict: dict[str, Any] = self.module.__dict__
        self.dict: dict[str, str] = {}
        self.files: list[str] = []
        self._read_keys: set[str] = set()
        self._code_strings: set[str] = set()  # string literals in the config files' code (see _strings_in_code)
        self._unread_reported = False
        self._overrides: list[tuple[str, str]] = []
        if items:
            self.typed_dict.update(items)

    def __repr__(self) -> str:
        return f"<Config files={self.files!r} keys={len(self.keys())}>"

    # ---------------------------------------------------------------- loading

    def load_file(self, filename: str | os.PathLike) -> None:
        """Execute a Python config file into this config."""
        filename = os.fspath(filename)
        try:
            with open(filename, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {filename!r}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {filename!r}: {exc}") from exc
        self.files.append(filename)
        has_header = text.startswith("#!")  # '#!rnn.py': a comment to Python, so line numbers stay right
        try:
            code = compile(text, filename, "exec")
        except SyntaxError as exc:
            if not has_header and not filename.endswith(".py"):
                raise ConfigError(
                    f"config file {filename!r} is not a Python config ({exc.msg} at line {exc.lineno}); "
                    "configs are Python files, optionally starting with '#!rnn.py'"
                ) from None
            raise ConfigError(f"syntax error in config file {filename}:{exc.lineno}: {exc.msg}") from None
        self._code_strings |= _strings_in_code(code)
        namespace = self.typed_dict
        namespace["config"] = self
        namespace["__file__"] = filename
        previous_global = _global_config
        set_global_config(self)
        try:
            exec(code, namespace)
        except ConfigError:
            raise
        except Exception as exc:
            line = _innermost_line_in(exc, filename)
            where = f"{filename}:{line}" if line else filename
            raise ConfigError(f"error while executing config file {where}: {type(exc).__name__}: {exc}") from exc
        finally:
            # Without another global config this one stays global: its functions may call get_global_config() later.
            if previous_global is not None:
                set_global_config(previous_global)
        for value in list(namespace.values()):  # functions imported from the experiment's own modules
            if isinstance(value, types.FunctionType) and value.__module__ != self.MODULE_NAME:
                self._code_strings |= _strings_in_code(value.__code__)
        # `config = {}` / `config = json.loads(...)` in i6_core files rebinds the name (a plain key then); otherwise
        # `config` stays, for config functions that read options when they are called (as in RETURNN).
        self._apply_overrides()

    def install_module(self) -> None:
        """Make the config namespace importable as ``__returnn_config__`` (needed to unpickle config functions)."""
        sys.modules[self.MODULE_NAME] = self.module

    def cmd_args(self) -> list[str]:
        """Arguments that rebuild this config with :func:`load_config` (in another process)."""
        args = list(self.files)
        for key, value in self._overrides:
            args += ["++" + key, "+" + value if value.startswith("-") else value]
        return args

    def parse_cmd_args(self, args: Sequence[str]) -> list[str]:
        """Parse ``[--config FILE] [++include FILE[,FILE]] [++key value ...]``.

        Returns the files of ``--config`` and ``++include``, in command-line order, for the caller to load after the
        config files given first (so that their values win, as in RETURNN). Overrides are applied now (so config
        files see them while they execute) and again after each file is loaded (so they win over every file).
        """
        files: list[str] = []
        i = 0
        args = list(args)
        while i < len(args):
            arg = args[i]
            if arg == "--config":
                if i + 1 >= len(args):
                    raise ConfigError("command line: '--config' needs a file name")
                files.append(args[i + 1])
                i += 2
            elif arg.startswith("++"):
                key = arg[2:]
                if not key:
                    raise ConfigError("command line: '++' needs a key name, as in '++num_epochs 10'")
                if i + 1 >= len(args):
                    raise ConfigError(f"command line: '{arg}' needs a value, as in '{arg} VALUE'")
                value = args[i + 1]
                if value.startswith("+-"):
                    value = value[1:]
                if key == "include":
                    files += value.split(",")
                else:
                    self._overrides.append((key, value))
                i += 2
            else:
                raise ConfigError(
                    f"command line: unexpected argument {arg!r}; expected config files first, "
                    "then '++key value' pairs (see --help)"
                )
        self._apply_overrides()
        return files

    def _apply_overrides(self) -> None:
        """Give each override its value: typed like the Python value the config holds for the key, if any (see
        :func:`_override_value`), else the string."""
        for key, value in self._overrides:
            if key in self.typed_dict:
                self.typed_dict[key] = _override_value(key, value, self.typed_dict[key])
                self.dict.pop(key, None)
            else:
                self.dict[key] = value

    # ---------------------------------------------------------------- access

    def keys(self) -> list[str]:
        """The keys set, sorted (not the ``__dunder__`` names of the config module)."""
        keys = set(self.typed_dict) | set(self.dict)
        return sorted(key for key in keys if not (key.startswith("__") and key.endswith("__")))

    def has(self, key: str) -> bool:
        """Whether the key is set (counts as reading it)."""
        self._read_keys.add(key)
        return key in self.typed_dict or key in self.dict

    def is_typed(self, key: str) -> bool:
        """Whether the key holds a Python value (from a config file or a typed override), not a command-line string."""
        return key in self.typed_dict

    def set(self, key: str, value: Any) -> None:
        """Set a key as a Python value."""
        self.typed_dict[key] = value
        self.dict.pop(key, None)

    def update(self, items: dict[str, Any]) -> None:
        """Set several keys as Python values."""
        for key, value in items.items():
            self.set(key, value)

    def _raw(self, key: str, default: Any) -> Any:
        self._read_keys.add(key)
        if key in self.typed_dict:
            return self.typed_dict[key]
        if key in self.dict:
            return self.dict[key]
        if default is _UNSET:
            option = declared_option(key)
            return option.default if option is not None else None
        return default

    def typed_value(self, key: str, default: Any = _UNSET) -> Any:
        """The value as it is (Python value, or the string from the command line)."""
        return self._raw(key, default)

    def opt_typed_value(self, key: str, default: Any = _UNSET) -> Any:
        """The same as :meth:`typed_value` (RETURNN's name)."""
        return self.typed_value(key, default)

    def value(self, key: str, default: Any = _UNSET, index: int | None = None, list_join_str: str = ",") -> Any:
        """The value as a string (lists joined with ``list_join_str``), or ``default``."""
        value = self._raw(key, default)
        if isinstance(value, (list, tuple)):
            if index is not None:
                return value[index] if index < len(value) else default
            return list_join_str.join(str(v) for v in value)
        if value is None or isinstance(value, str):
            return value
        return str(value)

    def int(self, key: str, default: Any = _UNSET) -> int | None:
        """An int (also from an integral float or a decimal string); None if unset."""
        return self._converted(key, default, _to_int, "an int")

    def float(self, key: str, default: Any = _UNSET) -> float | None:
        """A float (also from an int or a string such as ``"1e-3"`` or ``"inf"``); None if unset."""
        return self._converted(key, default, _to_float, "a number")

    def bool(self, key: str, default: Any = _UNSET) -> bool | None:
        """A bool (also from an int or a string such as ``"true"``, ``"off"``); None if unset."""
        value = self._raw(key, default)
        if value is None:
            return None
        return _parse_bool(key, value)

    def is_true(self, key: str, default: bool = False) -> bool:
        """Whether the value is true (Python truth, or a string that reads as true)."""
        value = self._raw(key, default)
        return bool(value) if not isinstance(value, str) else _parse_bool(key, value)

    def bool_or_other(self, key: str, default: Any = _UNSET) -> Any:
        """A bool if the value reads as one, else the value as it is (e.g. a dict or a string)."""
        value = self._raw(key, default)
        if isinstance(value, str):
            try:
                return _parse_bool(key, value)
            except ConfigError:
                return value
        return value

    def list(self, key: str, default: Any = _UNSET) -> list[Any]:
        """A list: lists and tuples as they are, a string split at commas, another value as its only item."""
        return _list_of(self._raw(key, default))

    def int_list(self, key: str, default: Any = _UNSET) -> list[int]:
        """A list (see :meth:`list`) of ints."""
        return self._converted(key, default, _to_int_list, "a list of ints") or []

    def float_list(self, key: str, default: Any = _UNSET) -> list[float]:
        """A list (see :meth:`list`) of floats."""
        return self._converted(key, default, _to_float_list, "a list of numbers") or []

    def int_pair(self, key: str, default: Any = _UNSET) -> tuple[int, int] | None:
        """Two ints, from an int (used twice) or a list of one or two ints; None if unset."""
        value = self._raw(key, default)
        if value is None:
            return None
        items = self.int_list(key, default)
        if len(items) == 1:
            return items[0], items[0]
        if len(items) != 2:
            raise ConfigError(f"config key {key!r}: expected an int or a pair of ints, got {value!r}")
        return items[0], items[1]

    def is_of_type(self, key: str, types_: type | tuple[type, ...]) -> bool:
        """Whether the key holds a Python value of these types (does not count as reading it)."""
        return isinstance(self.typed_dict.get(key), types_)

    def get_of_type(self, key: str, types_: type | tuple[type, ...], default: Any = None) -> Any:
        """The value if it has one of these types, ``default`` if unset; anything else is an error."""
        names = " or ".join(t.__name__ for t in (types_ if isinstance(types_, tuple) else (types_,)))
        return self._checked(key, default, lambda value: isinstance(value, types_), names)

    def callable(self, key: str, default: Any = None) -> Any:
        """A callable from the config (functions, classes, partials), or ``default``; anything else is an error."""
        return self._checked(key, default, callable, "a function")

    def _converted(self, key: str, default: Any, convert: Callable[[Any], Any], expected: str) -> Any:
        """``convert(value)``, None if unset; a ConfigError naming the key if ``convert`` fails."""
        value = self._raw(key, default)
        if value is None:
            return None
        try:
            return convert(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected {expected}, got {value!r}") from None

    def _checked(self, key: str, default: Any, is_valid: Callable[[Any], bool], expected: str) -> Any:
        value = self._raw(key, default)
        if value is None or value is default or is_valid(value):
            return value
        raise ConfigError(f"config key {key!r}: expected {expected}, got {type(value).__name__} {value!r}")

    # ---------------------------------------------------------------- unknown keys

    def read_keys(self) -> set[str]:
        """The keys read so far (by any getter, also when unset)."""
        return set(self._read_keys)

    def unread_user_keys(self) -> list[str]:
        """Keys the user set that nothing has read, apart from the exempt ones (see module docs)."""
        result = []
        for key in self.keys():
            if key in self._read_keys or key.startswith("_") or key in PIPELINE_INJECTED_KEYS:
                continue
            value = self.typed_dict.get(key)
            if isinstance(value, (types.ModuleType, type)) or callable(value):
                continue
            result.append(key)
        return result

    def check_unknown_keys(self) -> None:
        """At start-up: stop at near misses of the trainer's own options (typos such as ``bach_size``).

        With ``config_unknown_keys = "error"`` (the default), an unread key that is a near miss of a declared option
        is an error ("did you mean ..."), unless its name occurs as a string in the config's code: a config function
        may read it later (``config.int("max_seq_len")`` in ``get_model``). Every other unread key is left to
        :meth:`report_unread_keys`, once it is known what was read.
        """
        mode = self._unknown_keys_mode()
        if mode == "ignore":
            return
        typos = []
        for key in self.unread_user_keys():
            if declared_option(key) is not None or returnn_key_not_used(key) or key in self._code_strings:
                continue
            close = closest_known_key(key, ())
            if close:
                typos.append(f"{key!r} (did you mean {close!r}?)")
        if typos:
            message = "config keys that are set but never read: " + ", ".join(typos)
            if mode == "error":
                raise ConfigError(message + "; fix the names, or set config_unknown_keys = 'warn'")
            logger.warning(message)

    def report_unread_keys(self) -> None:
        """Warn about keys that are still unread, once it is known what was read: after the first train step (config
        functions such as ``get_model`` and ``dynamic_learning_rate`` have run then), or at the end of a task
        without steps. Reports only once; in a run of several processes only the first one reports.
        """
        if self._unread_reported:
            return
        self._unread_reported = True
        if self._unknown_keys_mode() == "ignore" or int(os.environ.get("RANK", "0")) != 0:
            return
        for key in self.unread_user_keys():
            if declared_option(key) is not None:
                continue  # read by code that did not run in this task
            if returnn_key_not_used(key):
                logger.warning(
                    f"config key {key!r} is a RETURNN option that this trainer does not use; it has no effect"
                )
                continue
            close = closest_known_key(key, self._read_keys)
            hint = f" (did you mean {close!r}?)" if close else ""
            logger.warning(f"config key {key!r} is set but not used by anything{hint}")

    def _unknown_keys_mode(self) -> str:
        mode = self.value("config_unknown_keys")
        if mode not in ("error", "warn", "ignore"):
            raise ConfigError(f"config key 'config_unknown_keys': expected 'error', 'warn' or 'ignore', got {mode!r}")
        return mode


def _strings_in_code(code: types.CodeType) -> set[str]:
    """The string constants of ``code`` and of the functions and classes defined in it (key names that config
    functions read, as in ``config.int("max_seq_len")``)."""
    strings: set[str] = set()
    todo = [code]
    while todo:
        for const in todo.pop().co_consts:
            if isinstance(const, str):
                strings.add(const)
            elif isinstance(const, types.CodeType):
                todo.append(const)
    return strings


def _list_of(value: Any) -> list[Any]:
    """See :meth:`Config.list`."""
    if value is None:
        return []
    if isinstance(value, str):
        return [item for item in value.split(",") if item]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _to_int(value: Any) -> int:
    """An int from an integer (also numpy's), an integral float or a decimal string; TypeError/ValueError else."""
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer()):
        return int(value)
    raise TypeError(value)


def _to_float(value: Any) -> float:
    """A float from a number (not a bool) or a numeric string; TypeError/ValueError else."""
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, str):
        return float(value.strip())
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(value)


def _to_int_list(value: Any) -> list[int]:
    return [_to_int(item) for item in _list_of(value)]


def _to_float_list(value: Any) -> list[float]:
    return [_to_float(item) for item in _list_of(value)]


def _override_value(key: str, text: str, current: Any) -> Any:
    """A command-line string for a key that already has a Python value: parse it as a literal of that kind."""
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        try:
            return _parse_bool(key, text)
        except ConfigError:
            pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ConfigError(
            f"command line: '++{key} {text}': the config holds {type(current).__name__} {current!r} for this key, "
            f"and {text!r} is not a Python literal of that kind (write e.g. '++{key} {current!r}')"
        ) from None


def _innermost_line_in(exc: BaseException, filename: str) -> int | None:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# --------------------------------------------------------------------------------------------------
# The global config (a compatibility accessor: config functions call get_global_config())

_global_config: Config | None = None


def set_global_config(config: Config | None) -> None:
    """Make ``config`` the config of the running experiment (None: no global config)."""
    global _global_config
    _global_config = config


def get_global_config(*, raise_exception: bool = True, auto_create: bool = False) -> Config | None:
    """The config of the running experiment."""
    global _global_config
    if _global_config is None:
        if auto_create:
            _global_config = Config()
        elif raise_exception:
            raise ConfigError("no global config is set (call returnn.config.set_global_config(config) first)")
    return _global_config


def load_config(args: Iterable[str]) -> Config:
    """Build a config from command-line arguments: ``CONFIG [CONFIG ...] [--config F] [++key value ...]``."""
    args = list(args)
    files = []
    while args and not args[0].startswith(("-", "+")):
        files.append(args.pop(0))
    config = Config()
    files += config.parse_cmd_args(args)
    if not files:
        raise ConfigError("no config file given; usage: rnn.py CONFIG [CONFIG ...] [++key value ...]")
    set_global_config(config)
    config.install_module()
    for filename in files:
        config.load_file(filename)
    return config
