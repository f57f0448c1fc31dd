"""The config reference: generated from the option declarations, complete, and the README's copy up to date."""

from __future__ import annotations

import ast
import os
import pathlib
from collections import Counter

from returnn.config import ConfigOption
from returnn.tools.config_reference import collect_options, main, render_reference, replace_section

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "returnn"
GETTERS = {
    "value", "typed_value", "opt_typed_value", "int", "float", "bool", "is_true", "bool_or_other", "list",
    "int_list", "float_list", "int_pair", "has", "get_of_type", "callable", "is_typed", "is_of_type",
}  # fmt: skip


def config_reads() -> list[tuple[str, str]]:
    """(key, place) of every ``<...config>.<getter>("key", ...)`` call in the package."""
    reads = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = ast.unparse(node.func.value)
            if node.func.attr in GETTERS and receiver.endswith("config") and node.args:
                key = node.args[0]
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    reads.append((key.value, f"{path.relative_to(REPO_ROOT)}:{node.lineno}"))
    return reads


def test_every_option_read_is_declared():
    declared = collect_options()
    undeclared = sorted({f"{key} ({place})" for key, place in config_reads() if key not in declared})
    assert undeclared == [], "declare these with returnn.config.declare_options next to the code that reads them"


def test_every_declared_option_is_read_somewhere():
    literals = Counter()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals[node.value] += 1
    read = {key for key, _ in config_reads()}
    unread = sorted(name for name in collect_options() if name not in read and literals[name] < 2)
    assert unread == [], "declared options that no code reads"


def test_every_option_is_documented():
    assert all(option.doc.strip() for option in collect_options().values())


def test_readme_reference_is_up_to_date():
    assert main(["--check", os.fspath(REPO_ROOT / "README.md")]) == 0


def test_render_and_replace():
    options = {
        "b": ConfigOption("b", None, "Second | option.", "S"),
        "a": ConfigOption("a", 1, "First\n  option.", "S"),
    }
    text = render_reference(options)
    assert text.splitlines() == [
        "#### S",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
        "| `a` | `1` | First option. |",
        "| `b` | `None` | Second \\| option. |",
    ]
    from returnn.tools.config_reference import BEGIN_MARKER, END_MARKER

    doc = f"intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\noutro\n"
    assert replace_section(doc, text) == f"intro\n{BEGIN_MARKER}\n\n{text}\n{END_MARKER}\noutro\n"
