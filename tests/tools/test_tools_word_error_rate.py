"""tools/calculate-word-error-rate.py, run as i6_core's ReturnnComputeWERJob calls it."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import pytest

from returnn.errors import DatasetError
from returnn.tools.word_error_rate import edit_distance, load_text_dict, word_error_rate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO_ROOT, "tools", "calculate-word-error-rate.py")


def test_as_i6_core_calls_it(tmp_path):
    (tmp_path / "refs.py").write_text(repr({"a/1": "the cat sat", "a/2": "on the mat"}))
    (tmp_path / "hyps.py").write_text(repr({"a/1": "the cat sat", "a/2": "on a mat here"}))
    args = ["--expect_full", "--hyps", "hyps.py", "--refs", "refs.py", "--out", "wer"]
    result = subprocess.run([sys.executable, TOOL, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "wer").read_text() == "33.33\n"  # 1 substitution + 1 insertion over 6 reference words
    assert float(eval((tmp_path / "wer").read_text())) == pytest.approx(33.33)  # what a Sisyphus Variable reads
    (tmp_path / "hyps.py").write_text(repr({"a/1": "the cat sat", "a/2": "on the mat", "b/1": "extra"}))
    result = subprocess.run([sys.executable, TOOL, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "calculate-word-error-rate: error: --expect_full: 1 hypotheses have no reference, e.g. 'b/1'; "
        "score the full set"
    )


def test_edit_distance_and_wer():
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert edit_distance([], "a b".split()) == 2 and edit_distance("a b".split(), []) == 2
    assert word_error_rate({"s": "a b c d"}, {"s": "a b", "t": "x"}) == (50.0, 1)
    with pytest.raises(DatasetError, match="no hypothesis for 1 of 1 references, e.g. 's'"):
        word_error_rate({"s": "a"}, {"t": "a"})


def test_gzipped_n_best_lists(tmp_path):
    path = tmp_path / "hyps.py.gz"
    with gzip.open(path, "wt") as f:
        f.write(repr({"s": [(-1.0, "best  text"), (-2.0, "worse")]}))
    assert load_text_dict(str(path)) == {"s": "best  text"}
    (tmp_path / "bad.py").write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"bad.py': expected a dict, got list"):
        load_text_dict(str(tmp_path / "bad.py"))
