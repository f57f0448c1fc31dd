"""The network-dict reference: generated from the layer classes, complete, and the README's copy up to date."""

from __future__ import annotations

import pathlib

from returnn.tools.network_reference import main, render_reference
from returnn.torch.network.construction import supported_layer_classes

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_every_layer_class_is_in_the_reference():
    reference = render_reference()
    for name in supported_layer_classes():
        assert f"`{name}`" in reference, name
    assert "`forward_weights_init='glorot_uniform'`" in reference  # options come from the signatures


def test_readme_copy_is_up_to_date(capsys):
    assert main(["--check", str(README)]) == 0, capsys.readouterr().err


def test_check_reports_an_outdated_copy(tmp_path, capsys):
    stale = tmp_path / "README.md"
    text = README.read_text(encoding="utf-8").replace("| `copy` |", "| `kopy` |")
    stale.write_text(text, encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert "python -m returnn.tools.network_reference --update" in capsys.readouterr().err
    assert main(["--update", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == README.read_text(encoding="utf-8")
