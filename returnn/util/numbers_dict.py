"""Mainline's ``NumbersDict``: numbers by key, with arithmetic key by key (a plain number applies to every key)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["NumbersDict"]


class NumbersDict:
    """``{key: number}`` plus an optional ``broadcast_value`` for keys it does not hold.

    ``NumbersDict({"data": 3}) + NumbersDict({"data": 1, "classes": 2})`` is ``{"data": 4, "classes": 2}``; keys
    missing on one side count as its broadcast value, or are left out when it has none (as for ``+``, also for the
    other operators).
    """

    def __init__(
        self, auto_convert: Any = None, *, numbers_dict: Mapping[str, Any] | None = None, broadcast_value=None
    ):
        if isinstance(auto_convert, NumbersDict):
            numbers_dict, broadcast_value = auto_convert.dict, auto_convert.value
        elif isinstance(auto_convert, Mapping):
            numbers_dict = auto_convert
        elif auto_convert is not None:
            broadcast_value = auto_convert
        self.dict: dict[str, Any] = dict(numbers_dict or {})
        self.value = broadcast_value

    def __repr__(self) -> str:
        return f"NumbersDict({self.dict!r}, broadcast_value={self.value!r})"

    def __getitem__(self, key: str) -> Any:
        return self.dict.get(key, self.value)

    def __setitem__(self, key: str, value: Any) -> None:
        self.dict[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.dict

    def __iter__(self) -> Iterator[str]:
        return iter(self.dict)

    def keys(self):
        return self.dict.keys()

    def values(self):
        return self.dict.values()

    def items(self):
        return self.dict.items()

    def has_values(self) -> bool:
        """Whether it holds any number."""
        return bool(self.dict) or self.value is not None

    def max_value(self) -> Any:
        """The largest number held (the broadcast value included)."""
        return max([*self.dict.values(), *([self.value] if self.value is not None else [])])

    def min_value(self) -> Any:
        """The smallest number held (the broadcast value included)."""
        return min([*self.dict.values(), *([self.value] if self.value is not None else [])])

    def _combine(self, other: Any, op: Callable[[Any, Any], Any]) -> NumbersDict:
        other = other if isinstance(other, NumbersDict) else NumbersDict(other)
        result = {}
        for key in self.dict.keys() | other.dict.keys():
            a, b = self[key], other[key]
            if a is not None and b is not None:
                result[key] = op(a, b)
            elif op is operator.add:
                result[key] = a if b is None else b
        value = op(self.value, other.value) if self.value is not None and other.value is not None else None
        return NumbersDict(numbers_dict=result, broadcast_value=value)

    def __add__(self, other: Any) -> NumbersDict:
        return self._combine(other, operator.add)

    __radd__ = __add__

    def __sub__(self, other: Any) -> NumbersDict:
        return self._combine(other, operator.sub)

    def __mul__(self, other: Any) -> NumbersDict:
        return self._combine(other, operator.mul)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> NumbersDict:
        return self._combine(other, operator.truediv)

    def __floordiv__(self, other: Any) -> NumbersDict:
        return self._combine(other, operator.floordiv)

    def __eq__(self, other: object) -> bool:
        other = other if isinstance(other, NumbersDict) else NumbersDict(other)
        return self.dict == other.dict and self.value == other.value

    __hash__ = None
