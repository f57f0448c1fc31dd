"""Rank 0 puts the files that the forward hooks of several processes wrote together (merge_process_files), and the
process directories."""

from __future__ import annotations

import ast
import gzip
import json
import logging
import math
import os

import numpy as np
import pytest

from returnn.datasets.hdf import HDFDataset, SimpleHDFWriter
from returnn.errors import StepFunctionError
from returnn.torch.forward_merge import merge_process_files
from returnn.torch.forward_parts import _mirror_directories

# 5 sequences; batches of 2 dealt to 2 processes: rank 0 got positions 0, 1, 4 and rank 1 positions 2, 3
POSITIONS = {f"seq-{i}": i for i in range(5)}
RANK_SEQS = {0: [0, 1, 4], 1: [2, 3]}


@pytest.fixture
def dirs(tmp_path):
    directories = [tmp_path / "parts" / f"rank{rank}" for rank in RANK_SEQS]
    for directory in directories:
        directory.mkdir(parents=True)
    (tmp_path / "out").mkdir()
    return directories


def values(i: int) -> np.ndarray:
    return np.arange((i + 1) * 3, dtype="float32").reshape(i + 1, 3) + 100 * i


def write_hdf(path, seqs: list[int]) -> None:
    with SimpleHDFWriter(str(path), dim=3, ndim=2) as writer:
        for i in seqs:
            writer.insert_batch(values(i)[None], [i + 1], [f"seq-{i}"])


def read_hdf(path) -> list[tuple[str, np.ndarray]]:
    dataset = HDFDataset(files=[str(path)])
    dataset.init_seq_order(1)
    dataset.load_seqs(0, dataset.num_seqs)
    return [(dataset.get_tag(i), dataset.get_data(i, "data")) for i in range(dataset.num_seqs)]


def write_dict(path, seqs: list[int]) -> None:
    with open(path, "w") as file:
        file.write("{\n")
        for i in seqs:
            file.write(f"{f'seq-{i}'!r}: {[i, 'word']!r},\n")
        file.write("}\n")


def test_hdf_parts_are_merged_in_the_order_of_one_process(dirs, tmp_path):
    for directory, seqs in zip(dirs, RANK_SEQS.values()):
        write_hdf(directory / "output.hdf", seqs)
    written = merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    assert written == {"output.hdf": "HDF, 5 sequences from 2 processes"}
    merged = read_hdf(tmp_path / "out" / "output.hdf")
    assert [tag for tag, _ in merged] == [f"seq-{i}" for i in range(5)]
    for i, (_, data) in enumerate(merged):
        np.testing.assert_array_equal(data, values(i))
    assert os.listdir(tmp_path / "out") == ["output.hdf"]  # no temporary file left


def test_an_hdf_part_without_sequences_from_a_process_without_batches(dirs, tmp_path):
    write_hdf(dirs[0] / "output.hdf", [0, 1, 2, 3, 4])
    write_hdf(dirs[1] / "output.hdf", [])
    merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    assert [tag for tag, _ in read_hdf(tmp_path / "out" / "output.hdf")] == [f"seq-{i}" for i in range(5)]


def test_dicts_keyed_by_seq_tag_are_merged_in_the_order_of_one_process(dirs, tmp_path):
    for directory, seqs in zip(dirs, RANK_SEQS.values()):
        write_dict(directory / "search_out.py", seqs)
    written = merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    assert written == {"search_out.py": "dict, 5 sequences from 2 processes"}
    write_dict(tmp_path / "one_process.py", range(5))
    text = (tmp_path / "out" / "search_out.py").read_text()
    assert text == (tmp_path / "one_process.py").read_text()  # the same lines as one process writes
    assert list(ast.literal_eval(text).items()) == [(f"seq-{i}", [i, "word"]) for i in range(5)]


def test_json_dicts_stay_json_and_python_dicts_may_hold_inf_and_nan(dirs, tmp_path):
    for directory, seqs in zip(dirs, RANK_SEQS.values()):
        (directory / "hyps.json").write_text(json.dumps({f"seq-{i}": {"text": "w", "score": -i} for i in seqs}))
        scores = {i: "-inf" if i == 3 else f"-{i}.5" for i in seqs}  # as repr writes float("-inf")
        entries = "".join(f"'seq-{i}': [({scores[i]}, 'w'), (nan, 'x')],\n" for i in seqs)
        (directory / "search_out.py").write_text("{\n" + entries + "}\n")
    written = merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    assert written == {
        "hyps.json": "JSON, 5 sequences from 2 processes",
        "search_out.py": "dict, 5 sequences from 2 processes",
    }
    merged_json = json.loads((tmp_path / "out" / "hyps.json").read_text())
    assert list(merged_json.items()) == [(f"seq-{i}", {"text": "w", "score": -i}) for i in range(5)]
    # as i6_core reads search_out.py
    text = (tmp_path / "out" / "search_out.py").read_text()
    merged = eval(text, {"inf": math.inf, "nan": math.nan})
    assert list(merged) == [f"seq-{i}" for i in range(5)] and merged["seq-3"][0][0] == -math.inf
    assert merged["seq-1"][0] == (-1.5, "w") and math.isnan(merged["seq-4"][1][0])


def test_gzipped_dicts_are_merged_and_stay_gzipped(dirs, tmp_path):
    for directory, seqs in zip(dirs, RANK_SEQS.values()):
        write_dict(directory / "plain.py", seqs)
        (directory / "search_out.py.gz").write_bytes(gzip.compress((directory / "plain.py").read_bytes()))
        (directory / "plain.py").unlink()
    merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    write_dict(tmp_path / "one_process.py", range(5))
    merged = gzip.decompress((tmp_path / "out" / "search_out.py.gz").read_bytes()).decode()
    assert merged == (tmp_path / "one_process.py").read_text()


def test_a_file_opened_for_appending_is_appended_to_the_existing_one(dirs, tmp_path):
    (tmp_path / "out" / "summary.txt").write_text("run 1\n")
    (dirs[0] / "summary.txt").write_text("run 2\n")
    (dirs[0] / "new.txt").write_text("new\n")
    written = merge_process_files(
        [str(d) for d in dirs], POSITIONS, str(tmp_path / "out"), appended={"summary.txt", "new.txt"}
    )
    assert written == {"new.txt": "written by rank0 alone", "summary.txt": "appended to the existing file"}
    assert (tmp_path / "out" / "summary.txt").read_text() == "run 1\nrun 2\n"
    assert (tmp_path / "out" / "new.txt").read_text() == "new\n"


def test_files_of_one_process_and_files_equal_in_all_are_taken_as_they_are(dirs, tmp_path):
    (dirs[0] / "prior.txt").write_text("-0.5\n-1.2\n")
    for directory in dirs:
        (directory / "sub").mkdir()
        (directory / "sub" / "vocab.txt").write_text("a\nb\n")
    (dirs[1] / "sub" / "seq-3.wav").write_bytes(b"RIFF\x00")
    written = merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    assert written == {
        "prior.txt": "written by rank0 alone",
        os.path.join("sub", "seq-3.wav"): "written by rank1 alone",
        os.path.join("sub", "vocab.txt"): "the same in 2 processes",
    }
    assert (tmp_path / "out" / "prior.txt").read_text() == "-0.5\n-1.2\n"
    assert (tmp_path / "out" / "sub" / "vocab.txt").read_text() == "a\nb\n"
    assert (tmp_path / "out" / "sub" / "seq-3.wav").read_bytes() == b"RIFF\x00"


def test_an_existing_file_is_replaced_as_one_process_would_overwrite_it_with_a_warning(dirs, tmp_path, caplog):
    (tmp_path / "out" / "prior.txt").write_text("old")
    (dirs[1] / "prior.txt").write_text("new")
    with caplog.at_level(logging.WARNING):
        merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    assert (tmp_path / "out" / "prior.txt").read_text() == "new"
    assert "forward: replacing the existing" in caplog.text and "prior.txt" in caplog.text


def test_files_that_differ_and_cannot_be_merged_stop_before_anything_is_written(dirs, tmp_path):
    for directory, seqs in zip(dirs, RANK_SEQS.values()):
        write_hdf(directory / "output.hdf", seqs)
        (directory / "count.txt").write_text(f"{len(seqs)}\n")
    with pytest.raises(
        StepFunctionError,
        match=r"forward: 2 processes wrote different files 'count.txt', which cannot be merged \(only HDF files in "
        r"RETURNN's layout and dicts keyed by sequence tag are merged\); the parts are kept in .*rank0, "
        r".*rank1\. Write such a file in forward_finish_hook by rank 0 alone \(if run_ctx.rank == 0\) from the values "
        r"of all processes \(run_ctx.all_gather\(value\)\), or forward in one process",
    ):
        merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []
    assert sorted(os.listdir(dirs[1])) == ["count.txt", "output.hdf"]  # the parts are kept


def test_a_dict_that_is_not_keyed_by_the_forwarded_tags_is_not_merged(dirs, tmp_path):
    (dirs[0] / "stats.py").write_text("{'frames': 10}\n")
    (dirs[1] / "stats.py").write_text("{'frames': 7}\n")
    with pytest.raises(
        StepFunctionError, match=r"2 processes wrote different files 'stats.py', which cannot be merged"
    ):
        merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))


def test_an_hdf_with_a_tag_that_was_not_forwarded_is_named(dirs, tmp_path):
    write_hdf(dirs[0] / "output.hdf", [0, 1])
    write_hdf(dirs[1] / "output.hdf", [7])
    with pytest.raises(
        StepFunctionError, match=r"forward: 'output.hdf' holds the sequence tag 'seq-7', which no process forwarded"
    ):
        merge_process_files([str(d) for d in dirs], {**POSITIONS}, str(tmp_path / "out"))


def test_the_same_tag_from_two_processes_is_an_error(dirs, tmp_path):
    write_dict(dirs[0] / "search_out.py", [0, 1])
    write_dict(dirs[1] / "search_out.py", [1, 2])
    with pytest.raises(
        StepFunctionError,
        match=r"several processes wrote entries for the sequence tags \['seq-1'\] into 'search_out.py'; each process",
    ):
        merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))


def test_process_directories_get_the_working_directorys_subdirectories_up_to_a_limit(tmp_path, caplog):
    for name in ("a/b/c", "d", "forward-parts/rank0"):
        (tmp_path / "home" / name).mkdir(parents=True)
    (tmp_path / "home" / "a" / "file.txt").write_text("not copied")
    target = tmp_path / "home" / "forward-parts" / "rank1"
    target.mkdir()
    _mirror_directories(str(tmp_path / "home"), str(target), skip="forward-parts")
    assert sorted(str(path.relative_to(target)) for path in target.rglob("*")) == ["a", "a/b", "a/b/c", "d"]

    other = tmp_path / "other"
    with caplog.at_level(logging.WARNING):
        _mirror_directories(str(tmp_path / "home"), str(other), skip="forward-parts", limit=2)
    assert len(list(other.rglob("*"))) == 2
    assert "the working directory has more than 2 directories; the hooks can write files by relative" in caplog.text


def test_the_same_tag_with_values_that_do_not_compare_is_named_too(dirs, tmp_path):
    (dirs[0] / "hyps.py").write_text("{'seq-1': {'text': 'a'}}\n")
    (dirs[1] / "hyps.py").write_text("{'seq-1': {'text': 'b'}, 'seq-2': {'text': 'c'}}\n")
    with pytest.raises(StepFunctionError, match=r"wrote entries for the sequence tags \['seq-1'\] into 'hyps.py'"):
        merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))


def test_hdf_parts_with_different_layouts_stop_before_anything_is_written(dirs, tmp_path):
    write_hdf(dirs[0] / "output.hdf", [0, 1])
    with SimpleHDFWriter(str(dirs[1] / "output.hdf"), dim=4, ndim=2) as writer:  # 4 features instead of 3
        writer.insert_batch(np.zeros((1, 2, 4), dtype="float32"), [2], ["seq-2"])
    (dirs[0] / "prior.txt").write_text("-0.5\n")  # would be moved, taking it from rank0's directory
    with pytest.raises(
        StepFunctionError,
        match=r"forward: the processes wrote 'output.hdf' with different layouts, which cannot be merged: cannot merge "
        r"HDF files: data key 'data' has dtype float32 and shape per frame \(4,\) in .*rank1/output.hdf', but dtype "
        r"float32 and shape per frame \(3,\) in .*rank0/output.hdf'\. The parts are kept in .*rank0, .*rank1",
    ):
        merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []
    assert sorted(os.listdir(dirs[0])) == ["output.hdf", "prior.txt"]


def test_python_dict_entries_written_one_per_line_are_kept_as_written(dirs, tmp_path):
    (dirs[0] / "search_out.py").write_text("{\n'seq-0':  [(-1.5, 'a b')],\n\n'seq-4': [(-inf, '')],\n}\n")
    (dirs[1] / "search_out.py").write_text("{\n  'seq-2' : [(nan, 'c')]\n}\n")  # no comma after the last entry
    merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    text = (tmp_path / "out" / "search_out.py").read_text()
    assert text == "{\n'seq-0':  [(-1.5, 'a b')],\n'seq-2' : [(nan, 'c')],\n'seq-4': [(-inf, '')],\n}\n"


def test_python_dicts_in_other_layouts_are_read_whole(dirs, tmp_path):
    (dirs[0] / "hyps.py").write_text("{'seq-4': 'x', 'seq-0': [\n  1,\n  2,\n]}\n")  # two entries on a line, and
    (dirs[1] / "hyps.py").write_text("{\n'seq-2': 'y',  # a comment\n}\n")  # a comment
    merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    text = (tmp_path / "out" / "hyps.py").read_text()
    assert text == "{\n'seq-0': [1, 2],\n'seq-2': 'y',\n'seq-4': 'x',\n}\n"


def test_python_dicts_that_are_not_valid_literals_are_not_merged_and_a_tag_twice_in_one_part_is_a_dict(dirs, tmp_path):
    for text in ("{\n'seq-0': 1,,\n}\n", "{\n'seq-0': 1\n'seq-1': 3\n}\n"):  # a comma too many, one missing
        (dirs[0] / "hyps.py").write_text(text)
        (dirs[1] / "hyps.py").write_text("{\n'seq-2': 2,\n}\n")
        with pytest.raises(StepFunctionError, match=r"2 processes wrote different files 'hyps.py', which cannot be"):
            merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    (dirs[0] / "hyps.py").write_text("{\n'seq-1': 'old',\n'seq-0': 0,\n'seq-1': 'new',\n}\n")  # as a dict: 'new'
    merge_process_files([str(d) for d in dirs], POSITIONS, str(tmp_path / "out"))
    assert (tmp_path / "out" / "hyps.py").read_text() == "{\n'seq-0': 0,\n'seq-1': 'new',\n'seq-2': 2,\n}\n"
