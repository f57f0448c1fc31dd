"""The word error rate of hypotheses against references, both Python dict files ``{seq_tag: text}``.

``tools/calculate-word-error-rate.py --hyps H --refs R [--out F] [--expect_full]`` (as i6_core's
ReturnnComputeWERJob calls it). A file holds a Python dict literal (optionally gzipped), ``{tag: "words ..."}``, or
n-best lists ``{tag: [(score, "words ..."), ...]}`` (the first entry counts). The WER is the sum of the word-level
edit distances over the sum of the reference lengths, in percent; ``--out`` gets it as ``12.34`` on one line. Every
reference needs a hypothesis; with ``--expect_full`` every hypothesis needs a reference too. Exit code 2 with one line
on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from returnn.datasets.util.files import read_dict_file
from returnn.errors import DatasetError
from returnn.tools.dump_dataset import run_cli

__all__ = ["edit_distance", "load_text_dict", "main", "word_error_rate"]


def load_text_dict(filename: str) -> dict[str, str]:
    """``{seq_tag: text}`` from a Python dict file (see the module docstring)."""
    content = read_dict_file(filename, "text dict file")
    if not content:
        raise DatasetError(f"{filename}: expected a non-empty dict {{seq_tag: text}}, got an empty one")
    result = {}
    for tag, value in content.items():
        if isinstance(value, list) and value and isinstance(value[0], (tuple, list)) and len(value[0]) == 2:
            value = value[0][1]  # n-best list [(score, text), ...]: the best entry
        if not isinstance(tag, str) or not isinstance(value, str):
            raise DatasetError(f"{filename}: entry {tag!r}: expected a text or an n-best list, got {value!r}")
        result[tag] = value
    return result


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """The Levenshtein distance (substitutions, insertions, deletions) between two word sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def word_error_rate(refs: dict[str, str], hyps: dict[str, str], *, expect_full: bool = False) -> tuple[float, int]:
    """The WER in percent and the number of scored sequences.

    :param expect_full: every hypothesis must have a reference (else some were not scored)
    """
    missing = [tag for tag in refs if tag not in hyps]
    if missing:
        raise DatasetError(f"no hypothesis for {len(missing)} of {len(refs)} references, e.g. {missing[0]!r}")
    extra = [tag for tag in hyps if tag not in refs]
    if expect_full and extra:
        raise DatasetError(
            f"--expect_full: {len(extra)} hypotheses have no reference, e.g. {extra[0]!r}; score the full set"
        )
    errors = sum(edit_distance(refs[tag].split(), hyps[tag].split()) for tag in refs)
    words = sum(len(text.split()) for text in refs.values())
    if words == 0:
        raise DatasetError("the references hold no words, so the WER is not defined")
    return 100.0 * errors / words, len(refs)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="calculate-word-error-rate.py", description="Word error rate of hypotheses against references."
    )
    parser.add_argument("--hyps", required=True, help="hypotheses: Python dict file {seq_tag: text}")
    parser.add_argument("--refs", required=True, help="references, in the same format")
    parser.add_argument("--out", help="write the WER in percent to this file")
    parser.add_argument("--expect_full", action="store_true", help="every hypothesis must have a reference")
    parser.add_argument("--verbosity", type=int, default=4, help="accepted for compatibility")
    return parser.parse_args(list(argv))


def _run(args: argparse.Namespace) -> None:
    wer, num_seqs = word_error_rate(load_text_dict(args.refs), load_text_dict(args.hyps), expect_full=args.expect_full)
    print(f"calculate-word-error-rate: seqs={num_seqs} WER={wer:.2f}%")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"{wer:.2f}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_cli("calculate-word-error-rate", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
