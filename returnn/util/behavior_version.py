"""Mainline's ``BehaviorVersion``: configs set ``behavior_version``; this trainer has one behavior and ignores it."""

from __future__ import annotations

__all__ = ["BehaviorVersion"]


class BehaviorVersion:
    """Accepts the version a config or script sets, so that code calling it runs; nothing depends on it."""

    _version: int | None = None

    @classmethod
    def set(cls, version: int | None) -> None:
        """Record the version (it changes nothing)."""
        cls._version = version

    @classmethod
    def get(cls) -> int:
        """The recorded version, 0 if none was set."""
        return cls._version or 0

    @classmethod
    def is_set(cls) -> bool:
        """Whether a version was set."""
        return cls._version is not None
