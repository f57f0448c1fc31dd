"""Toy data for the demos, generated at start-up (no downloads). Each writer does nothing if its file exists.

- Frame classification: sequences of segments, each segment a run of one class; every frame is the class's
  prototype vector plus strong Gaussian noise. A single frame is often ambiguous, a whole segment is not, and the
  class sequence follows a pattern (each class is followed by the next or the one after), so a model that uses
  context (a BLSTM) beats a frame-by-frame one by far.
- A text corpus for language models: sentences from a small grammar, and counting sequences.

Files appear atomically (the HDF writer renames a finished temporary file), so an interrupted start leaves nothing
half-written behind.
"""

from __future__ import annotations

import os

import numpy as np

from returnn.datasets.hdf import SimpleHDFWriter

__all__ = [
    "FEATURE_DIM",
    "NUM_CLASSES",
    "frame_classification_seq",
    "write_frame_classification_hdf",
    "write_features_and_alignment_hdf",
    "LM_END",
    "LM_START",
    "lm_vocabulary",
    "write_lm_corpus",
]

FEATURE_DIM = 16
NUM_CLASSES = 8
_NOISE = 3.0  # per-dimension noise: a single frame is often ambiguous, a whole segment is not
_PROTOTYPE_SEED = 1234  # the same prototypes for every file, so that train and dev data are the same task


def _prototypes() -> np.ndarray:
    return np.random.RandomState(_PROTOTYPE_SEED).randn(NUM_CLASSES, FEATURE_DIM).astype(np.float32)


def frame_classification_seq(
    rng: np.random.RandomState, prototypes: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """One sequence: features ``[length, FEATURE_DIM]`` float32 and frame labels ``[length]`` int32."""
    labels = np.empty(length, dtype=np.int32)
    pos, label = 0, rng.randint(NUM_CLASSES)
    while pos < length:
        segment = rng.randint(3, 12)
        labels[pos : pos + segment] = label
        pos += segment
        label = (label + rng.randint(1, 3)) % NUM_CLASSES
    features = prototypes[labels] + _NOISE * rng.randn(length, FEATURE_DIM).astype(np.float32)
    return features, labels


def _frame_seqs(num_seqs: int, seed: int, min_len: int, max_len: int):
    rng = np.random.RandomState(seed)
    prototypes = _prototypes()
    for idx in range(num_seqs):
        features, labels = frame_classification_seq(rng, prototypes, rng.randint(min_len, max_len + 1))
        yield f"seq-{seed}-{idx}", features, labels


def _write_batches(writer: SimpleHDFWriter, seqs, *, extra_key: str | None, batch: int = 64) -> None:
    """Write ``(tag, inputs, extra)`` triples in padded batches."""
    seqs = list(seqs)
    for start in range(0, len(seqs), batch):
        part = seqs[start : start + batch]
        lengths = [len(inputs) for _, inputs, _ in part]
        padded = np.zeros((len(part), max(lengths), *part[0][1].shape[1:]), dtype=part[0][1].dtype)
        for b, (_, inputs, _) in enumerate(part):
            padded[b, : len(inputs)] = inputs
        extra = {extra_key: [labels for _, _, labels in part]} if extra_key else None
        writer.insert_batch(padded, seq_len=lengths, seq_tag=[tag for tag, _, _ in part], extra=extra)


def write_frame_classification_hdf(
    filename: str, *, num_seqs: int, seed: int, min_len: int = 40, max_len: int = 120
) -> None:
    """An HDF file with dense ``data`` ``[T, FEATURE_DIM]`` and sparse ``classes`` ``[T]`` (unless it exists).

    :param seed: the random seed of this file (use a different one for train and dev data)
    """
    if os.path.exists(filename):
        return
    os.makedirs(os.path.dirname(filename) or ".", exist_ok=True)
    writer = SimpleHDFWriter(
        filename,
        dim=FEATURE_DIM,
        ndim=2,
        extra_type={"classes": (NUM_CLASSES, 1, "int32")},
        extra_labels={"classes": [f"c{idx}" for idx in range(NUM_CLASSES)]},
    )
    with writer:
        _write_batches(writer, _frame_seqs(num_seqs, seed, min_len, max_len), extra_key="classes")


def write_features_and_alignment_hdf(
    features_file: str, alignment_file: str, *, num_seqs: int, seed: int, min_len: int = 40, max_len: int = 120
) -> None:
    """The same data as :func:`write_frame_classification_hdf`, split the way feature extraction and alignment
    jobs write it: features (dense ``data``) in one file, frame labels (sparse ``data``) in another, with the same
    sequence tags. Files that exist are left alone."""
    seqs = None
    if not os.path.exists(features_file) or not os.path.exists(alignment_file):
        seqs = list(_frame_seqs(num_seqs, seed, min_len, max_len))
    for filename, dim, ndim, pick in (
        (features_file, FEATURE_DIM, 2, lambda features, labels: features),
        (alignment_file, NUM_CLASSES, 1, lambda features, labels: labels),
    ):
        if os.path.exists(filename):
            continue
        os.makedirs(os.path.dirname(filename) or ".", exist_ok=True)
        with SimpleHDFWriter(filename, dim=dim, ndim=ndim) as writer:
            _write_batches(writer, ((tag, pick(f, lab), None) for tag, f, lab in seqs), extra_key=None)


# --------------------------------------------------------------------------------------------------
# Text for language models

LM_START = "[START]"
LM_END = "[END]"
_DETERMINERS = {"singular": ["a", "every", "the", "no"], "plural": ["some", "many", "the", "no"]}
_ADJECTIVES = ["big", "small", "red", "green", "old", "young"]
_NOUNS = {
    "singular": ["cat", "dog", "bird", "fish", "child", "teacher"],
    "plural": ["cats", "dogs", "birds", "fish", "children", "teachers"],
}
# the verb agrees with the subject, however many words lie between them
_VERBS = {"singular": ["sees", "likes", "follows", "feeds"], "plural": ["see", "like", "follow", "feed"]}
_INTRANSITIVE = {"singular": ["sleeps", "runs", "sings"], "plural": ["sleep", "run", "sing"]}
_PLACES = ["in the garden", "on the roof", "near the river"]
_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def lm_vocabulary() -> list[str]:
    """The words of the corpus, plus the sequence start and end symbols."""
    words = {"and", "then", "that", *_ADJECTIVES, *_NUMBERS}
    for table in (_DETERMINERS, _NOUNS, _VERBS, _INTRANSITIVE):
        for forms in table.values():
            words.update(forms)
    for place in _PLACES:
        words.update(place.split())
    return [LM_START, LM_END, *sorted(words)]


def _noun_phrase(rng: np.random.RandomState, number: str) -> list[str]:
    words = [rng.choice(_DETERMINERS[number])]
    if rng.rand() < 0.5:
        words.append(rng.choice(_ADJECTIVES))
    return [*words, rng.choice(_NOUNS[number])]


def _verb_phrase(rng: np.random.RandomState, number: str) -> list[str]:
    if rng.rand() < 0.4:
        return [rng.choice(_INTRANSITIVE[number])]
    return [rng.choice(_VERBS[number]), *_noun_phrase(rng, rng.choice(["singular", "plural"]))]


def _sentence(rng: np.random.RandomState) -> list[str]:
    if rng.rand() < 0.2:  # counting: after the first number every word is certain
        start = rng.randint(0, len(_NUMBERS) - 3)
        return _NUMBERS[start : start + rng.randint(3, len(_NUMBERS) - start + 1)]
    number = rng.choice(["singular", "plural"])
    words = _noun_phrase(rng, number)
    if rng.rand() < 0.3:  # a relative clause between subject and verb: "the dog that sees the cats ..."
        words += ["that", *_verb_phrase(rng, number)]
    words += _verb_phrase(rng, number)
    if rng.rand() < 0.3:
        words += rng.choice(_PLACES).split()
    if rng.rand() < 0.2:
        words += ["and", "then", *_verb_phrase(rng, number)]
    return words


def write_lm_corpus(filename: str, *, num_sentences: int, seed: int) -> None:
    """A text file with one generated sentence per line (unless it exists)."""
    if os.path.exists(filename):
        return
    os.makedirs(os.path.dirname(filename) or ".", exist_ok=True)
    rng = np.random.RandomState(seed)
    lines = [" ".join(_sentence(rng)) + "\n" for _ in range(num_sentences)]
    tmp_filename = f"{filename}.tmp{os.getpid()}"
    with open(tmp_filename, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp_filename, filename)
