"""Dataset classes by name, and :func:`init_dataset`, which turns a dataset definition into a dataset.

The registry fills itself on the first lookup: it imports the dataset modules of this package and registers
every :class:`Dataset` subclass they hold by its class name (the first one of a name wins).

A dataset module that fails to import (a missing optional package, a bug) breaks only the lookups of the classes it
defines: those raise a :class:`DatasetError` that names the module and the original exception, while every other
class works. Which classes a broken module defines is read from its source text, so this works for syntax errors
too.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from returnn.datasets.basic import Dataset
from returnn.errors import DatasetError

__all__ = ["init_dataset", "get_dataset_class", "register_dataset_class", "check_dataset_options"]

logger = logging.getLogger(__name__)

DATASET_MODULES = tuple(
    f"returnn.datasets.{name}"
    for name in (
        "basic",
        "cached2",
        "generating",
        "hdf",
        "meta",
        "combined",
        "concat_seqs",
        "map",
        "postprocessing",
        "variable",
        "lm",
        "audio",
        "numpy_dump",
        "distrib_files",
        "multi_proc",
        "multi_epoch",
        "text_dict",
    )
)

_CLASS_DEFINITION = re.compile(r"^class\s+([A-Za-z]\w*)", re.MULTILINE)


class _BrokenModule(NamedTuple):
    """A dataset module that failed to import, and the public classes its source defines."""

    module: str
    error: BaseException
    class_names: frozenset[str]

    def describe(self) -> str:
        return f"{self.module} ({type(self.error).__name__}: {self.error})"


class _Registry:
    """Dataset classes by name; filled from the dataset modules on the first lookup.

    :param modules: the full names of the modules to import.
    """

    def __init__(self, modules: Sequence[str] = DATASET_MODULES) -> None:
        self.modules = tuple(modules)
        self.classes: dict[str, type[Dataset]] = {}
        self.broken: list[_BrokenModule] = []
        self.loaded = False

    def load(self) -> None:
        for module_name in self.modules:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # any error while importing: only this module's classes become unavailable
                self._record_broken(module_name, exc)
                continue
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, Dataset) and not obj.__name__.startswith("_"):
                    self.classes.setdefault(obj.__name__, obj)
        self.loaded = True

    def _record_broken(self, module_name: str, exc: Exception) -> None:
        broken = _BrokenModule(module_name, exc, _classes_defined_in(module_name))
        self.broken.append(broken)
        logger.warning(
            f"dataset module {broken.describe()} failed to import; its classes "
            f"{sorted(broken.class_names) or '(unknown)'} are unavailable, all others work"
        )

    def names(self) -> list[str]:
        if not self.loaded:
            self.load()
        return sorted(self.classes)

    def lookup(self, name: str) -> type[Dataset]:
        known = self.names()
        if name in self.classes:
            return self.classes[name]
        for broken in self.broken:
            if name in broken.class_names:
                raise DatasetError(
                    f"dataset class {name!r} is defined in module {broken.describe()}, which failed to import; "
                    "fix the error in that module (or install the package it needs)"
                ) from broken.error
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        failed = (
            f" (Dataset modules that failed to import: {'; '.join(b.describe() for b in self.broken)}.)"
            if self.broken
            else ""
        )
        raise DatasetError(f"unknown dataset class {name!r}.{hint} Known classes: {', '.join(known)}{failed}")


def _classes_defined_in(module_name: str) -> frozenset[str]:
    """The public top-level class names in a module's source, read without importing it (empty if unreadable)."""
    try:
        spec = importlib.util.find_spec(module_name)
        if spec is None or spec.origin is None:
            return frozenset()
        with open(spec.origin, encoding="utf-8") as f:
            source = f.read()
    except (ImportError, OSError, ValueError, UnicodeDecodeError):
        return frozenset()
    return frozenset(name for name in _CLASS_DEFINITION.findall(source))


_registry = _Registry()


def register_dataset_class(cls: type[Dataset]) -> None:
    """Make ``cls`` available by its name in dataset dicts (``{"class": "MyDataset", ...}``)."""
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise DatasetError(f"cannot register {cls!r}: not a subclass of returnn.datasets.Dataset")
    _registry.classes.setdefault(cls.__name__, cls)


def get_dataset_class(name: str) -> type[Dataset]:
    """The dataset class of this name; a DatasetError with suggestions if there is none, or with the import error
    if the module that defines it failed to import."""
    return _registry.lookup(name)


def _init_params(cls: type) -> tuple[set[str], list[str], bool]:
    """The keyword parameters of the constructors along the class chain.

    :return: all parameter names; the required ones of the class's own constructor (the bases' required ones
        are usually filled in by the subclass); whether the chain ends in ``**kwargs`` (then any name goes).
    """
    names: set[str] = set()
    required: list[str] | None = None
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        passes_on = False
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        for param in params:
            if param.kind == param.VAR_KEYWORD:
                passes_on = True
            elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(param.name)
        if required is None:
            required = [
                p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            ]
        if not passes_on:
            return names, required, False
    return names, required or [], True


def check_dataset_options(cls: type, kwargs: dict[str, Any]) -> None:
    """Check constructor options against the constructors of ``cls`` and its bases; report all problems at once."""
    params, required, open_ended = _init_params(cls)
    problems = []
    if not open_ended:
        for key in kwargs:
            if key not in params:
                close = difflib.get_close_matches(key, list(params), n=1)
                problems.append(f"unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    problems += [f"missing required option {name!r}" for name in required if name not in kwargs]
    if problems:
        raise DatasetError(
            f"dataset class {cls.__name__}: {'; '.join(problems)}. Valid options: {', '.join(sorted(params))}"
        )


def init_dataset(
    opts: dict[str, Any] | str | Dataset | Callable[[], Any],
    default_kwargs: dict[str, Any] | None = None,
    extra_kwargs: dict[str, Any] | None = None,
) -> Dataset:
    """Make a dataset from its definition.

    :param opts: a dict with ``"class"`` (a class name or a Dataset subclass) and the constructor options; a
        string holding such a dict literal (starting with ``{``); a Dataset (returned as is); or a callable
        returning any of these.
    :param default_kwargs: options used where the definition does not set them (e.g. ``name``).
    :param extra_kwargs: options that override the definition.
    """
    if isinstance(opts, Dataset):
        return opts
    if isinstance(opts, str):
        if not opts.lstrip().startswith("{"):
            raise DatasetError(f"dataset given as a string must be a dict literal starting with '{{', got {opts!r}")
        try:
            opts = ast.literal_eval(opts)
        except (SyntaxError, ValueError) as exc:
            raise DatasetError(f"dataset string {opts!r} is not a valid Python dict literal: {exc}") from exc
    elif callable(opts) and not isinstance(opts, dict):
        return init_dataset(opts(), default_kwargs=default_kwargs, extra_kwargs=extra_kwargs)
    if not isinstance(opts, dict):
        raise DatasetError(f"expected a dataset dict with 'class', a Dataset or a callable, got {type(opts).__name__}")
    kwargs = dict(opts)
    if "class" not in kwargs:
        raise DatasetError(f"dataset dict has no 'class' key: {opts!r}")
    cls = kwargs.pop("class")
    if isinstance(cls, str):
        cls = get_dataset_class(cls)
    elif not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise DatasetError(f"dataset 'class' must be a class name or a Dataset subclass, got {cls!r}")
    for key, value in (default_kwargs or {}).items():
        kwargs.setdefault(key, value)
    kwargs.update(extra_kwargs or {})
    check_dataset_options(cls, kwargs)
    return cls(**kwargs)
