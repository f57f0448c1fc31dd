"""The learning_rates file: the learning rate and the scores of every epoch so far.

Pipelines read it with ``eval`` to follow a training and to pick its best epochs, so its format is fixed (see
:func:`format_epoch_data`): a dict literal, epochs ascending, ``EpochData`` in keyword form, plain floats and
``float('nan')`` / ``float('inf')``::

    {
        1: EpochData(learningRate=0.001, error={'dev_loss_ce': 2.9, 'train_loss_ce': 3.2}),
        2: EpochData(learningRate=0.001, error={}),
    }

The trainer reads it back with :func:`parse_epoch_data`, which walks the syntax tree instead of evaluating the file.
It also reads the forms that other writers used: ``EpochData(lr, {...})`` positionally, ``nan`` / ``inf`` as names,
``np.float64(x)``, and string entries such as ``':meta:...'``.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Any, Union

from returnn.errors import CheckpointError

__all__ = ["EpochData", "format_epoch_data", "parse_epoch_data", "load_learning_rate_file"]

Score = Union[float, str]  # str only for informational entries of other trainers' files (":meta:...")


@dataclasses.dataclass
class EpochData:
    """What the learning_rates file holds for one epoch."""

    learning_rate: float | None
    error: dict[str, Score] = dataclasses.field(default_factory=dict)

    @property
    def scores(self) -> dict[str, float]:
        """The numeric scores (entries such as ``:meta:...`` left out)."""
        return {
            key: float(value)
            for key, value in self.error.items()
            if not key.startswith(":meta:") and isinstance(value, (int, float)) and not isinstance(value, bool)
        }


def _format_float(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "float('nan')"
    if math.isinf(value):
        return "float('inf')" if value > 0 else "float('-inf')"
    return repr(value)


def _format_value(value: Any) -> str:
    if value is None or isinstance(value, str):
        return repr(value)
    return _format_float(value)


def format_epoch_data(epoch_data: dict[int, EpochData]) -> str:
    """The text of the learning_rates file: one line per epoch, epochs ascending, score keys sorted."""
    lines = ["{"]
    for epoch in sorted(epoch_data):
        data = epoch_data[epoch]
        error = ", ".join(f"{key!r}: {_format_value(data.error[key])}" for key in sorted(data.error))
        lines.append(f"    {epoch}: EpochData(learningRate={_format_value(data.learning_rate)}, error={{{error}}}),")
    lines.append("}")
    return "\n".join(lines) + "\n"


class _FileFormatError(Exception):
    def __init__(self, node: ast.AST, message: str):
        super().__init__(f"line {getattr(node, 'lineno', '?')}: {message}")


_NAMED_FLOATS = {"nan": math.nan, "inf": math.inf}


def _parse_value(node: ast.AST) -> Any:
    """A number, a string or None, written as a literal or as ``float('nan')``, ``nan``, ``-inf``, ``np.float64(x)``."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (int, float, str))):
        return node.value if isinstance(node.value, (str, type(None))) else float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _parse_value(node.operand)
        if isinstance(value, float):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id in _NAMED_FLOATS:
        return _NAMED_FLOATS[node.id]
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        func = node.func
        # float('nan'), and np.float64(2.5) as older trainers wrote it under numpy 2
        is_float = isinstance(func, ast.Name) and func.id == "float"
        is_numpy = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
        is_numpy = is_numpy and func.value.id in ("np", "numpy") and func.attr.startswith("float")
        if is_float or is_numpy:
            arg = _parse_value(node.args[0])
            try:
                return float(arg)
            except (TypeError, ValueError):
                pass
    raise _FileFormatError(node, f"expected a number, got {ast.unparse(node)!r}")


def _parse_epoch_entry(node: ast.AST) -> EpochData:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "EpochData"):
        raise _FileFormatError(node, f"expected EpochData(learningRate=..., error={{...}}), got {ast.unparse(node)!r}")
    names = ["learningRate", "error"]
    if len(node.args) > len(names):
        raise _FileFormatError(node, "EpochData takes two arguments (learningRate, error)")
    fields = dict(zip(names, node.args))
    for keyword in node.keywords:
        if keyword.arg not in names or keyword.arg in fields:
            raise _FileFormatError(node, f"EpochData: unexpected argument {keyword.arg!r}")
        fields[keyword.arg] = keyword.value
    learning_rate = _parse_value(fields["learningRate"]) if "learningRate" in fields else None
    error_node = fields.get("error", ast.Dict(keys=[], values=[]))
    if not isinstance(error_node, ast.Dict):
        raise _FileFormatError(node, f"EpochData error: expected a dict, got {ast.unparse(error_node)!r}")
    error: dict[str, Score] = {}
    for key_node, value_node in zip(error_node.keys, error_node.values):
        if not (isinstance(key_node, ast.Constant) and isinstance(key_node.value, str)):
            raise _FileFormatError(error_node, "EpochData error: keys must be strings")
        error[key_node.value] = _parse_value(value_node)
    if isinstance(learning_rate, str):
        raise _FileFormatError(node, "EpochData learningRate must be a number")
    return EpochData(learning_rate=learning_rate, error=error)


def parse_epoch_data(text: str, filename: str = "<learning_rates>") -> dict[int, EpochData]:
    """Read the text of a learning_rates file (without evaluating it).

    :raise CheckpointError: the text is not a learning_rates file
    """
    try:
        tree = ast.parse(text, filename=filename, mode="eval").body
        if not isinstance(tree, ast.Dict):
            raise _FileFormatError(tree, "expected a dict {epoch: EpochData(...), ...}")
        result: dict[int, EpochData] = {}
        for key_node, value_node in zip(tree.keys, tree.values):
            if not (isinstance(key_node, ast.Constant) and type(key_node.value) is int):
                raise _FileFormatError(value_node, "expected an int epoch as key")
            result[key_node.value] = _parse_epoch_entry(value_node)
    except SyntaxError as exc:
        raise CheckpointError(
            f"learning_rates file {filename!r} is corrupted (line {exc.lineno}: {exc.msg}); it was left as it is: "
            "repair it, or delete it to start the learning rate schedule afresh"
        ) from None
    except _FileFormatError as exc:
        raise CheckpointError(
            f"learning_rates file {filename!r} is corrupted ({exc}); it was left as it is: "
            "repair it, or delete it to start the learning rate schedule afresh"
        ) from None
    return result


def load_learning_rate_file(filename: str) -> dict[int, EpochData]:
    """Read a learning_rates file. A missing file reads as empty."""
    try:
        with open(filename, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"cannot read learning_rates file {filename!r}: {exc}; check the path and the permissions of the "
            "file (config key 'learning_rate_file')"
        ) from exc
    return parse_epoch_data(text, filename)
