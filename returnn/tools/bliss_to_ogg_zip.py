"""A Bliss corpus (RASR's XML format) as the zip that :class:`returnn.datasets.audio.OggZipDataset` reads.

``tools/bliss-to-ogg-zip.py CORPUS.xml[.gz] --output OUT.zip [--subset_segment_file F] [--no_ogg] [--no_conversion]
[--ffmpeg_acodec C] [--raw_sample_rate N] [--feat_sample_rate N]`` (as i6_core's BlissToOggZipJob calls it).

The zip ``<name>.zip`` holds ``<name>.txt`` (the segments: text, speaker_name, file, seq_name, duration) and one OGG
file per segment, ``<name>/<recording>/<start>_<end>.ogg`` (``<recording>``: the audio file's path without the
directory and extension all recordings share). Each segment is cut from its recording and encoded as OGG Vorbis with
soundfile (recordings in WAV, FLAC, OGG, ...); with ``--ffmpeg_acodec``, or for recordings soundfile cannot read, the
system's ``ffmpeg`` converts. ``--no_conversion`` copies recordings that are OGG already (segments starting at 0),
``--no_ogg`` writes no audio. ``--sprint_cache`` (cutting silence as a RASR feature cache did) is not supported; the
sample rates only served it. The zip appears under its name only when complete. Exit code 2 with one line on bad
input.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from decimal import Decimal
from xml.etree import ElementTree

from returnn.errors import ConfigError, DatasetError
from returnn.tools.dump_dataset import run_cli

__all__ = ["BlissSegment", "iter_bliss", "main"]


@dataclasses.dataclass(frozen=True)
class BlissSegment:
    """One segment of a Bliss corpus; ``name`` is ``corpus/recording/segment`` (RASR's segment name)."""

    name: str
    recording: str
    start: Decimal
    end: Decimal
    orth: str
    speaker: str | None = None


def iter_bliss(filename: str) -> Iterator[BlissSegment]:
    """The segments of a Bliss corpus file (``.gz`` too), in file order. Elements without a name are numbered."""
    opener = gzip.open if filename.endswith(".gz") else open
    try:
        with opener(filename, "rb") as f:
            yield from _segments(ElementTree.iterparse(f, events=("start", "end")), filename)
    except ElementTree.ParseError as exc:
        raise DatasetError(f"{filename}: not a Bliss XML corpus: {exc}") from None


def _segments(events: Iterator[tuple[str, ElementTree.Element]], filename: str) -> Iterator[BlissSegment]:
    names: list[str] = []
    counts = [0]
    recording = None
    root = None
    for event, elem in events:
        if event == "start":
            root = elem if root is None else root
            counts[-1] += 1
            names.append(elem.attrib.get("name", str(counts[-1])))
            counts.append(0)
            if elem.tag == "recording":
                recording = elem.attrib.get("audio")
            continue
        if elem.tag == "segment":
            if recording is None:
                raise DatasetError(f"{filename}: segment {'/'.join(names)!r} is not inside a <recording audio=...>")
            orth = elem.find("orth")
            speaker = elem.find("speaker")
            try:
                start, end = Decimal(elem.attrib["start"]), Decimal(elem.attrib["end"])
            except (KeyError, ArithmeticError):
                raise DatasetError(f"{filename}: segment {'/'.join(names)!r} needs numbers 'start' and 'end'") from None
            yield BlissSegment(
                name="/".join(names),
                recording=recording,
                start=start,
                end=end,
                orth=" ".join((orth.text or "").split()) if orth is not None else "",
                speaker=speaker.attrib.get("name") if speaker is not None else None,
            )
            root.clear()  # keep the memory flat for large corpora
        names.pop()
        counts.pop()


def _common_affixes(paths: Sequence[str]) -> tuple[str, str]:
    """The directory prefix and the extension suffix that all recording paths share."""
    prefix = os.path.commonprefix(list(paths))
    prefix = prefix[: prefix.rfind("/") + 1]
    suffix = os.path.commonprefix([path[len(prefix) :][::-1] for path in paths])[::-1]
    suffix = suffix[suffix.find(".") :] if "." in suffix else ""
    return prefix, suffix


class _AudioWriter:
    """Cuts segments from recordings and encodes them as OGG (soundfile, or ffmpeg where asked or needed)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def ogg_bytes(self, segment: BlissSegment) -> bytes:
        if self.args.no_conversion:
            if not segment.recording.endswith(".ogg") or segment.start != 0:
                raise DatasetError(
                    f"--no_conversion copies recordings that are OGG already, for segments starting at 0; segment "
                    f"{segment.name!r} is {segment.recording!r} from {segment.start}s; leave out --no_conversion"
                )
            return _read_file(segment.recording)
        if self.args.ffmpeg_acodec is None:
            encoded = self._with_soundfile(segment)
            if encoded is not None:
                return encoded
        return self._with_ffmpeg(segment)

    def _with_soundfile(self, segment: BlissSegment) -> bytes | None:
        try:
            import soundfile
        except ImportError:
            return None
        try:
            info = soundfile.info(segment.recording)
        except FileNotFoundError:
            raise DatasetError(f"segment {segment.name!r}: recording {segment.recording!r} not found") from None
        except RuntimeError:  # a format libsndfile does not read: ffmpeg's turn
            return None
        start = int(segment.start * info.samplerate)
        stop = int(segment.end * info.samplerate) if segment.end.is_finite() else None
        audio, sample_rate = soundfile.read(segment.recording, start=start, stop=stop, dtype="float32")
        if len(audio) == 0:
            raise DatasetError(
                f"segment {segment.name!r} ({segment.start}s..{segment.end}s) is outside its recording "
                f"{segment.recording!r} ({info.frames / info.samplerate:.2f}s)"
            )
        buffer = io.BytesIO()
        soundfile.write(buffer, audio, sample_rate, format="OGG", subtype="VORBIS")
        return buffer.getvalue()

    def _with_ffmpeg(self, segment: BlissSegment) -> bytes:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            why = "--ffmpeg_acodec is given" if self.args.ffmpeg_acodec else "soundfile cannot read it"
            raise DatasetError(
                f"segment {segment.name!r}: converting {segment.recording!r} needs ffmpeg ({why}), and there is none "
                "on PATH; install ffmpeg, or give recordings in WAV/FLAC/OGG"
            )
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "segment.ogg")
            cmd = [ffmpeg, *(["-acodec", self.args.ffmpeg_acodec] if self.args.ffmpeg_acodec else [])]
            cmd += ["-i", segment.recording, "-ss", str(segment.start)]
            cmd += ["-t", str(segment.end - segment.start)] if segment.end.is_finite() else []
            cmd += [out, "-loglevel", "error"]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise DatasetError(f"ffmpeg failed on {segment.recording!r}: {result.stderr.strip()[-300:]}")
            return _read_file(out)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DatasetError(f"recording {path!r} not found") from None


def _selected_segments(args: argparse.Namespace) -> list[BlissSegment]:
    segments = list(iter_bliss(args.bliss_filename))
    if args.subset_segment_file:
        with open(args.subset_segment_file, encoding="utf-8") as f:
            wanted = [line.strip() for line in f if line.strip()]
        missing = sorted(set(wanted) - {segment.name for segment in segments})
        if missing:
            raise DatasetError(
                f"{args.subset_segment_file}: {len(missing)} segments are not in {args.bliss_filename}, e.g. "
                f"{missing[0]!r}"
            )
        segments = [segment for segment in segments if segment.name in set(wanted)]
    if not segments:
        raise DatasetError(f"{args.bliss_filename}: no segments to write")
    bad = [segment for segment in segments if not segment.end > segment.start]
    if bad:
        raise DatasetError(f"segment {bad[0].name!r}: end {bad[0].end} is not after start {bad[0].start}")
    return segments


def write_zip(args: argparse.Namespace) -> int:
    """Write the zip (see the module docstring). Returns the number of segments."""
    if args.sprint_cache:
        raise ConfigError(
            "--sprint_cache is not supported (it cuts the audio as a RASR feature cache's silence removal did); "
            "leave it out to keep each segment's audio whole"
        )
    if not args.output.endswith(".zip"):
        raise ConfigError(f"--output {args.output!r}: the name must end in .zip")
    segments = _selected_segments(args)
    name = os.path.basename(args.output)[: -len(".zip")]
    prefix, suffix = _common_affixes(sorted({segment.recording for segment in segments}))
    audio = None if args.no_ogg else _AudioWriter(args)
    entries = []
    tmp_path = f"{args.output}.tmp{os.getpid()}"
    try:
        with zipfile.ZipFile(tmp_path, "w", compression=zipfile.ZIP_DEFLATED) as zip_file:
            for segment in segments:
                recording = segment.recording[len(prefix) : len(segment.recording) - len(suffix)]
                file = f"{recording}/{segment.start}_{segment.end}.ogg"
                if audio is not None:
                    zip_file.writestr(f"{name}/{file}", audio.ogg_bytes(segment), compress_type=zipfile.ZIP_STORED)
                entry = {"text": segment.orth, "speaker_name": segment.speaker, "file": file, "seq_name": segment.name}
                entries.append({**entry, "duration": float(segment.end - segment.start)})
            zip_file.writestr(f"{name}.txt", "[\n" + "".join(f"{entry!r},\n" for entry in entries) + "]\n")
        os.replace(tmp_path, args.output)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return len(entries)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bliss-to-ogg-zip.py", description="A Bliss corpus as a zip of OGG files that OggZipDataset reads."
    )
    parser.add_argument("bliss_filename", help="the Bliss corpus (.xml or .xml.gz)")
    parser.add_argument("--output", required=True, help="the zip file to write (<name>.zip)")
    parser.add_argument("--subset_segment_file", help="only these segments (one name per line)")
    parser.add_argument("--no_ogg", action="store_true", help="write no audio, only the segment list")
    parser.add_argument("--no_conversion", action="store_true", help="copy recordings that are OGG already")
    parser.add_argument("--sprint_cache", help="not supported (see the module docs)")
    parser.add_argument("--raw_sample_rate", type=int, help="accepted for compatibility (used with --sprint_cache)")
    parser.add_argument("--feat_sample_rate", type=int, help="accepted for compatibility (used with --sprint_cache)")
    parser.add_argument("--ffmpeg_acodec", help="convert with the system's ffmpeg, forcing this input codec")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> None:
        count = write_zip(args)
        print(f"bliss-to-ogg-zip: wrote {count} segments to {args.output}")

    return run_cli("bliss-to-ogg-zip", run)


if __name__ == "__main__":
    sys.exit(main())
