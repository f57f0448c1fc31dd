"""The training's output locations: checked at start-up, and freed of temporary files that killed processes left.

Every file is written to ``<name>.tmp<pid>`` and renamed (:func:`returnn.torch.distributed.write_file_atomic`); a
process killed during a write leaves that temporary file behind. :func:`remove_stale_temporary_files` deletes those
whose process is gone (at the start of training and in task cleanup_old_models).
"""

from __future__ import annotations

import errno
import logging
import os
import re

from returnn.config import Config
from returnn.errors import ConfigError
from returnn.torch import distributed

__all__ = ["output_locations", "prepare_outputs", "check_output_locations", "remove_stale_temporary_files"]

logger = logging.getLogger(__name__)


def output_locations(config: Config) -> dict[str, str]:
    """The config keys of the training's outputs and their paths: ``model`` (a file prefix) and
    ``learning_rate_file``, where set."""
    locations = {}
    for key in ("model", "learning_rate_file"):
        value = config.typed_value(key, None)
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
            locations[key] = os.fspath(value)
    return locations


def prepare_outputs(config: Config) -> None:
    """At the start of training: check the output locations, and remove stale temporary files there."""
    locations = output_locations(config)
    check_output_locations(locations)
    remove_stale_temporary_files(locations)


def check_output_locations(locations: dict[str, str]) -> None:
    """Check that the outputs' directories can be created and written (main process only; nothing is created: a
    probe file in the nearest existing directory is written and removed).

    :raise ConfigError: a directory cannot be created or written, naming the config key and the path
    """
    if not distributed.is_main_process():
        return
    for key, path in locations.items():
        directory = os.path.dirname(os.path.abspath(path))
        existing = directory
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        try:
            if not os.path.isdir(existing):
                raise NotADirectoryError(errno.ENOTDIR, f"{existing!r} is a file, not a directory")
            probe = os.path.join(existing, f".returnn-write-test.tmp{os.getpid()}")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as exc:
            raise ConfigError(
                f"config key {key!r}: cannot write to {directory!r} (for {path!r}): {exc.strerror or exc}; choose a "
                "location that can be created and written"
            ) from None


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def remove_stale_temporary_files(locations: dict[str, str]) -> list[str]:
    """Delete ``<output>*.tmp<pid>`` files next to the outputs whose writing process no longer exists (main process
    only). Returns the deleted paths."""
    if not distributed.is_main_process():
        return []
    removed = []
    for path in locations.values():
        directory, base = os.path.split(os.path.abspath(path))
        pattern = re.compile(re.escape(base) + r".*\.tmp(\d+)")
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            match = pattern.fullmatch(name)
            if match and int(match.group(1)) != os.getpid() and _process_is_gone(int(match.group(1))):
                if distributed.remove_file(os.path.join(directory, name)):
                    removed.append(os.path.join(directory, name))
    if removed:
        logger.info(f"removed temporary files of processes that are gone: {', '.join(sorted(removed))}")
    return removed
