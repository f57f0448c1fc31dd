"""Who runs the process: :func:`get_login_username` (mainline's demo configs put it into their paths)."""

from __future__ import annotations

import getpass
import os

__all__ = ["get_login_username"]


def get_login_username() -> str:
    """The name of the user running this process (from the password database, else the environment)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        return getpass.getuser()
