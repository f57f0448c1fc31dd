"""tools/bliss-to-ogg-zip.py, run as i6_core's BlissToOggZipJob calls it; OggZipDataset reads the result."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from returnn.datasets.audio import OggZipDataset

soundfile = pytest.importorskip("soundfile")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO_ROOT, "tools", "bliss-to-ogg-zip.py")
RATE = 8000

CORPUS = """<?xml version="1.0" encoding="utf-8"?>
<corpus name="train">
  <recording name="rec1" audio="{audio}/spk/rec1.wav">
    <segment name="s1" start="0.0" end="0.5"><orth> hello   world </orth><speaker name="anna"/></segment>
    <segment name="s2" start="0.5" end="1.25"><orth>good bye</orth></segment>
  </recording>
  <recording name="rec2" audio="{audio}/spk/rec2.wav">
    <segment start="0" end="0.25"><orth>yes</orth></segment>
  </recording>
</corpus>
"""


@pytest.fixture
def corpus(tmp_path):
    os.makedirs(tmp_path / "audio" / "spk")
    for name, seconds in (("rec1", 1.5), ("rec2", 0.5)):
        wave = np.sin(np.arange(int(seconds * RATE)) / 10).astype("float32") * 0.5
        soundfile.write(tmp_path / "audio" / "spk" / f"{name}.wav", wave, RATE)
    path = tmp_path / "corpus.xml"
    path.write_text(CORPUS.format(audio=tmp_path / "audio"))
    return path


def run_tool(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)


def read_zip(path, audio=True) -> list[tuple[str, str, int]]:
    dataset = OggZipDataset(
        path=str(path), audio={"features": "raw", "peak_normalization": False} if audio else None, targets=None
    )
    dataset.init_seq_order(epoch=1)
    rows = []
    for i in range(dataset.num_seqs):
        dataset.load_seqs(i, i + 1)
        frames = dataset.get_data(i, "data").shape[0] if audio else 0
        rows.append((dataset.get_tag(i), str(dataset.get_data(i, "raw")), frames))
    return rows


def test_as_i6_core_calls_it(corpus, tmp_path):
    (tmp_path / "segments").write_text("train/rec1/s2\ntrain/rec2/1\n")
    args = [corpus, "--output", "out.ogg.zip", "--subset_segment_file", "segments"]
    result = run_tool(*args, "--raw_sample_rate", RATE, "--feat_sample_rate", 100, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(zipfile.ZipFile(tmp_path / "out.ogg.zip").namelist()) == [
        "out.ogg.txt",
        "out.ogg/rec1/0.5_1.25.ogg",
        "out.ogg/rec2/0_0.25.ogg",
    ]
    rows = read_zip(tmp_path / "out.ogg.zip")
    assert [(tag, text) for tag, text, _ in rows] == [("train/rec1/s2", "good bye"), ("train/rec2/1", "yes")]
    assert [frames for _, _, frames in rows] == [int(0.75 * RATE), int(0.25 * RATE)]

    assert run_tool(corpus, "--output", "text.zip", "--no_ogg", cwd=tmp_path).returncode == 0
    rows = read_zip(tmp_path / "text.zip", audio=False)
    assert rows == [("train/rec1/s1", "hello world", 0), ("train/rec1/s2", "good bye", 0), ("train/rec2/1", "yes", 0)]
    meta = eval(zipfile.ZipFile(tmp_path / "text.zip").read("text.txt"))
    assert meta[0] == {"text": "hello world", "speaker_name": "anna", "file": "rec1/0.0_0.5.ogg",
                       "seq_name": "train/rec1/s1", "duration": 0.5}  # fmt: skip


def test_bad_input_is_one_line(corpus, tmp_path):
    result = run_tool(corpus, "--output", "out.zip", "--no_conversion", cwd=tmp_path)
    assert result.returncode == 2 and not (tmp_path / "out.zip").exists()
    assert result.stderr.startswith("bliss-to-ogg-zip: error: --no_conversion copies recordings that are OGG already")
    result = run_tool(corpus, "--output", "out.zip", "--sprint_cache", "x.cache", cwd=tmp_path)
    assert result.returncode == 2 and "--sprint_cache is not supported" in result.stderr
    (tmp_path / "segments").write_text("train/rec9/s1\n")
    result = run_tool(corpus, "--output", "out.zip", "--subset_segment_file", "segments", cwd=tmp_path)
    assert result.returncode == 2 and "1 segments are not in" in result.stderr and "'train/rec9/s1'" in result.stderr


def test_no_conversion_copies_ogg_recordings(tmp_path):
    from returnn.tools.bliss_to_ogg_zip import main

    soundfile.write(tmp_path / "r.ogg", np.zeros(RATE // 2, dtype="float32"), RATE, format="OGG", subtype="VORBIS")
    corpus = tmp_path / "c.xml"
    corpus.write_text(
        f'<corpus name="c"><recording name="r" audio="{tmp_path}/r.ogg">'
        '<segment name="s" start="0" end="0.5"><orth>a</orth></segment></recording></corpus>'
    )
    assert main([str(corpus), "--output", str(tmp_path / "c.zip"), "--no_conversion"]) == 0
    copied = zipfile.ZipFile(tmp_path / "c.zip").read("c/r/0_0.5.ogg")
    assert copied == (tmp_path / "r.ogg").read_bytes()
