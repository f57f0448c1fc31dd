"""Logging: targets and verbosity from the config, and RETURNN's ``log.v1`` .. ``log.v5`` streams.

Library code logs with ``logging.getLogger(__name__)``. RETURNN's verbosity levels 0-5 map onto logging levels:
``log_verbosity = 3`` (the default) shows ``logger.info``; 4 shows :data:`V4`; 5 (one line per step) shows
``logger.debug``. Warnings show at verbosity 1 and above, errors always.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import sys
from typing import TextIO

from returnn.config import Config, declare_options
from returnn.errors import ConfigError

__all__ = ["V1", "V2", "V3", "V4", "V5", "Log", "log", "level_for_verbosity"]

V1 = logging.WARNING  # 30
V2 = 25
V3 = logging.INFO  # 20
V4 = 15
V5 = logging.DEBUG  # 10
_LEVELS = {0: logging.ERROR, 1: V1, 2: V2, 3: V3, 4: V4, 5: V5}
logging.addLevelName(V2, "INFO2")
logging.addLevelName(V4, "INFO4")

ROOT_LOGGER_NAME = "returnn"

declare_options(
    "Logging",
    {
        "log": (
            None,
            'Log targets: a list of file paths and/or "stdout" ("$date" in a path is replaced). '
            "Without targets, logs go to stdout.",
        ),
        "log_verbosity": (
            3,
            "0-5, per target or one for all; 3 = epoch summaries, 4 = more detail, 5 = one line per step.",
        ),
        "log_format": (
            "default",
            'Per target or one for all: "default" (message only), "timed" (with time), '
            '"verbose" (time, level and module), "raw".',
        ),
    },
)


def level_for_verbosity(verbosity: int) -> int:
    """The lowest logging level shown at a RETURNN verbosity."""
    return _LEVELS[max(0, min(5, verbosity))]


_FORMATS = {
    "default": "%(message)s",
    "raw": "%(message)s",
    "timed": "%(asctime)s %(message)s",
    "verbose": "%(asctime)s %(levelname)s %(name)s: %(message)s",
}


class _VerbosityStream(io.TextIOBase):
    """A file-like stream that logs each complete line at one level (``print(..., file=log.v4)``)."""

    def __init__(self, level: int):
        super().__init__()
        self._level = level
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            logging.getLogger(ROOT_LOGGER_NAME).log(self._level, line)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            logging.getLogger(ROOT_LOGGER_NAME).log(self._level, self._buffer)
            self._buffer = ""


class _RankPrefix(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.prefix = f"rank {rank}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_rank_prefixed", False):  # the same record passes several handlers
            record.msg = f"{self.prefix}{record.msg}"
            record._rank_prefixed = True
        return True


class Log:
    """The log set-up of the process. There is one instance, :data:`log`."""

    def __init__(self) -> None:
        self.v0 = _VerbosityStream(logging.ERROR)
        self.v1 = _VerbosityStream(V1)
        self.v2 = _VerbosityStream(V2)
        self.v3 = _VerbosityStream(V3)
        self.v4 = _VerbosityStream(V4)
        self.v5 = _VerbosityStream(V5)
        self.error = self.v0
        self.verbose = [self.v0, self.v1, self.v2, self.v3, self.v4, self.v5]
        self._handlers: list[logging.Handler] = []

    def initialize(
        self,
        logs: list[str] | None = None,
        verbosity: list[int] | None = None,
        formatter: list[str] | None = None,
        stdout: TextIO | None = None,
        propagate: bool = False,
    ) -> None:
        """Set up the targets. Each target gets its own verbosity and format (the last given one repeats).

        :param propagate: whether records also go on to Python's root logger (and its handlers), as in mainline
        """
        self.close()
        logs = list(logs or []) or ["stdout"]
        verbosity = list(verbosity or [3])
        formatter = list(formatter or ["default"])
        unknown = [fmt for fmt in formatter if fmt not in _FORMATS]
        if unknown:
            raise ConfigError(
                f"config key 'log_format': unknown format {unknown[0]!r}; choose one of {sorted(_FORMATS)}"
            )
        root = logging.getLogger(ROOT_LOGGER_NAME)
        root.propagate = propagate
        lowest = logging.CRITICAL
        for i, target in enumerate(logs):
            level = level_for_verbosity(verbosity[min(i, len(verbosity) - 1)])
            fmt = formatter[min(i, len(formatter) - 1)]
            handler = self._make_handler(target, stdout)
            handler.setLevel(level)
            handler.setFormatter(logging.Formatter(_FORMATS[fmt], datefmt="%Y-%m-%d %H:%M:%S"))
            root.addHandler(handler)
            self._handlers.append(handler)
            lowest = min(lowest, level)
        root.setLevel(lowest)

    @staticmethod
    def _make_handler(target: str, stdout: TextIO | None) -> logging.Handler:
        if target == "stdout":
            return logging.StreamHandler(stdout or sys.stdout)
        if target.startswith("|"):
            raise ConfigError(f"config key 'log': pipe targets ({target!r}) are not supported; give a file path")
        path = target.replace("$date", datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S"))
        directory = os.path.dirname(path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            return logging.FileHandler(path, mode="a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config key 'log': cannot open log file {path!r}: {exc}") from exc

    def init_by_config(self, config: Config, *, stdout: TextIO | None = None) -> None:
        """Set up the targets from ``log``, ``log_verbosity`` and ``log_format`` (lists, or one value for all)."""
        logs = [os.fspath(target) for target in config.list("log")]
        formats = [str(item) for item in config.list("log_format")]
        self.initialize(logs=logs, verbosity=config.int_list("log_verbosity"), formatter=formats, stdout=stdout)

    @property
    def initialized(self) -> bool:
        """Whether targets are set up (by :meth:`initialize` or :meth:`init_by_config`, until :meth:`close`)."""
        return bool(self._handlers)

    def quiet_non_main_rank(self, rank: int) -> None:
        """On ranks other than 0 of a multi-process run: only warnings and errors, prefixed with ``rank N:`` (else
        every line of the log would come once per process)."""
        if rank == 0:
            return
        root = logging.getLogger(ROOT_LOGGER_NAME)
        root.setLevel(max(root.level, logging.WARNING))
        for handler in root.handlers:
            if not any(isinstance(f, _RankPrefix) for f in handler.filters):
                handler.addFilter(_RankPrefix(rank))

    def has_file_targets(self) -> bool:
        """Whether a target is a file (errors are then also written to it)."""
        return any(isinstance(handler, logging.FileHandler) for handler in self._handlers)

    def write_to_files(self, level: int, message: str) -> None:
        """A record for the file targets only: what the terminal shows anyway, such as the traceback of a crash."""
        record = logging.getLogger(ROOT_LOGGER_NAME).makeRecord(ROOT_LOGGER_NAME, level, "", 0, message, None, None)
        for handler in self._handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)

    def close(self) -> None:
        """Flush the ``v`` streams and remove the targets."""
        root = logging.getLogger(ROOT_LOGGER_NAME)
        for stream in self.verbose:
            stream.flush()
        for handler in self._handlers:
            root.removeHandler(handler)
            handler.close()
        self._handlers = []


log = Log()
