"""RETURNN's ``returnn.util.basic`` import path, for the few helpers that configs and pipelines import from it.

``cf`` and ``get_login_username`` live here; the others are imported from the modules named after their topic.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess

from returnn.util.behavior_version import BehaviorVersion
from returnn.util.numbers_dict import NumbersDict

__all__ = ["BehaviorVersion", "NumbersDict", "cf", "get_login_username"]

logger = logging.getLogger(__name__)


@functools.cache
def cf(filename: str) -> str:
    """The path of a local copy of ``filename``, made by the cluster's file cache tool ``cf`` if it is installed.

    Without a ``cf`` executable on PATH, or if it fails, ``filename`` itself is returned (with a warning on
    failure), so configs that wrap their paths in ``cf(...)`` run anywhere. Results are memoized per process.
    """
    executable = shutil.which("cf")
    if executable is None:
        return filename
    try:
        result = subprocess.run([executable, os.fspath(filename)], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        logger.warning("cf %s failed (%s); using the file in place", filename, exc)
        return filename
    cached = result.stdout.strip()
    if not cached:
        logger.warning("cf %s printed no path; using the file in place", filename)
        return filename
    return cached


def get_login_username() -> str:
    """The name of the user running the process (RETURNN's demos put it into their output paths)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return str(os.getuid())
