"""Audio features from waveforms, in numpy: RETURNN's ``ExtractAudioFeatures`` with its options and feature types.

The computations follow librosa's conventions (the library RETURNN used), so that models trained on RETURNN's
features see the same kind of numbers: centred frames (zero padding of ``n_fft // 2`` on both sides), a periodic
Hann window, Slaney-style mel filters with area normalisation, ``power_to_db`` with an 80 dB range for MFCCs, and the
orthonormal DCT-II. Window and step lengths are given in seconds; ``n_fft = int(window_len * sample_rate)``.

Feature types (``features``):

- ``"raw"``: the waveform itself, ``[T, 1]`` (``[T, C]`` with ``num_channels = C``)
- ``"mfcc"``: ``num_feature_filters`` MFCCs from 128 mel bands (``n_mels``); the first coefficient is replaced by
  the frame's RMS energy
- ``"log_mel_filterbank"``: ``log10(max(1e-3, mel power))``
- ``"db_mel_filterbank"``: ``20 * log10(max(min_amp, mel power))``
- ``"linear_spectrogram"``: STFT magnitudes with ``n_fft = 2 * num_feature_filters``, the highest bin dropped

Processing order: resample to ``sample_rate`` (if given), ``pre_process``, peak normalisation, pre-emphasis,
feature function, deltas (``with_delta``), mean/std normalisation, ``join_frames``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from returnn.errors import DatasetError

__all__ = [
    "ExtractAudioFeatures",
    "read_audio",
    "FEATURE_FUNCTIONS",
    "stft",
    "mel_filterbank",
    "hz_to_mel",
    "mel_to_hz",
    "dct_ortho",
    "power_to_db",
    "frame_rms",
    "deltas",
]


def read_audio(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Decode an audio file (wav, flac, ogg, ... anything libsndfile reads) with ``soundfile``.

    :param data: the file's content
    :param name: where the data comes from, for error messages
    :return: (samples as float32, ``[T]`` for mono or ``[T, C]``; sample rate)
    """
    try:
        import soundfile
    except ImportError:
        raise DatasetError(f"reading audio ({name}) needs the 'soundfile' package: pip install soundfile") from None
    try:
        audio, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32")
    except (RuntimeError, soundfile.LibsndfileError, ValueError) as exc:
        raise DatasetError(f"cannot decode audio file {name}: {exc}") from exc
    return audio, sample_rate


class ExtractAudioFeatures:
    """Turns a waveform into a feature matrix ``[T, D]`` (float32). See the module docs for the options.

    :param window_len: analysis window in seconds
    :param step_len: frame shift in seconds
    :param num_feature_filters: feature dimension (default 40; 1 for raw)
    :param with_delta: number of delta orders appended (``True`` = 1)
    :param norm_mean: subtracted from the features: a number, an array or a file readable by ``numpy.loadtxt``
    :param norm_std_dev: divides the features, like ``norm_mean``
    :param features: the feature type, or a function ``f(audio, sample_rate, window_len, step_len,
        num_feature_filters, **feature_options) -> [T, D]``
    :param feature_options: extra keyword arguments of the feature function (``n_mels``, ``fmin``, ...)
    :param random_state: seed or ``numpy.random.RandomState`` handed to ``pre_process``
    :param pre_process: ``f(audio=, sample_rate=, random_state=) -> audio``, e.g. speed perturbation
    :param sample_rate: resample the audio to this rate; None keeps the file's rate
    :param num_channels: expected channel count; None mixes several channels down to mono
    :param peak_normalization: scale the waveform so that its largest absolute value is 1
    :param preemphasis: ``y[t] = x[t] - preemphasis * x[t - 1]``
    :param join_frames: stack this many consecutive frames into one (zero-padded at the end)
    """

    def __init__(
        self,
        window_len: float = 0.025,
        step_len: float = 0.010,
        num_feature_filters: int | None = None,
        with_delta: bool | int = False,
        norm_mean: Any = None,
        norm_std_dev: Any = None,
        features: str | Callable[..., np.ndarray] = "mfcc",
        feature_options: dict[str, Any] | None = None,
        random_permute: Any = None,
        random_state: int | np.random.RandomState | None = None,
        raw_ogg_opts: Any = None,
        pre_process: Callable[..., np.ndarray] | None = None,
        sample_rate: int | None = None,
        num_channels: int | None = None,
        peak_normalization: bool = True,
        preemphasis: float | None = None,
        join_frames: int | None = None,
    ):
        if random_permute:
            raise DatasetError(
                "audio option 'random_permute' (librosa-based perturbation) is not supported; "
                "do the perturbation in a 'pre_process' function instead"
            )
        if features == "raw_ogg" or raw_ogg_opts is not None:
            raise DatasetError("audio features 'raw_ogg' are not supported; use 'raw' for the waveform")
        if isinstance(features, str) and features not in FEATURE_FUNCTIONS:
            raise DatasetError(
                f"audio option 'features': unknown type {features!r}; choose one of: {', '.join(FEATURE_FUNCTIONS)}"
            )
        if features == "raw":
            num_feature_filters = num_feature_filters or num_channels or 1
            if num_feature_filters != (num_channels or 1):
                raise DatasetError(
                    f"audio features 'raw': num_feature_filters={num_feature_filters} must equal the channel count "
                    f"(num_channels={num_channels!r})"
                )
        elif num_channels not in (None, 1):
            raise DatasetError(f"audio option num_channels={num_channels}: several channels only work with 'raw'")
        self.window_len = window_len
        self.step_len = step_len
        self.num_feature_filters = num_feature_filters or 40
        self.with_delta = int(with_delta)
        self.norm_mean = _load_norm(norm_mean, "norm_mean")
        self.norm_std_dev = _load_norm(norm_std_dev, "norm_std_dev")
        self.features = features
        self.feature_options = dict(feature_options or {})
        self.pre_process = pre_process
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.peak_normalization = peak_normalization
        self.preemphasis = preemphasis
        self.join_frames = join_frames
        if isinstance(random_state, np.random.RandomState):
            self._random = random_state
        else:
            self._random = np.random.RandomState(0 if random_state is None else random_state)
        self._pending_seed: int | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], where: str) -> ExtractAudioFeatures:
        """Build from a config dict; unknown options are a config error that names ``where`` and the valid ones."""
        try:
            return cls(**options)
        except TypeError as exc:
            import inspect

            valid = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
            raise DatasetError(f"{where}: {exc}; valid options: {', '.join(valid)}") from None

    def set_random_seed(self, seed: int) -> None:
        """Seed the randomness given to ``pre_process`` (applied on its next use: datasets call this for every
        sequence, and seeding costs more than many sequences' features)."""
        self._pending_seed = seed % 2**32

    @property
    def random(self) -> np.random.RandomState:
        """The random state handed to ``pre_process``."""
        if self._pending_seed is not None:
            self._random.seed(self._pending_seed)
            self._pending_seed = None
        return self._random

    def get_feature_dimension(self) -> int:
        return self.num_feature_filters * (1 + self.with_delta) * (self.join_frames or 1)

    def get_audio_features_from_raw_bytes(self, raw_bytes: bytes, seq_name: str | None = None) -> np.ndarray:
        """Decode an audio file's content and extract the features."""
        audio, sample_rate = read_audio(raw_bytes, repr(seq_name) if seq_name else "from bytes")
        return self.get_audio_features(audio, sample_rate)

    def get_audio_features(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """:return: features ``[T, D]`` float32 for a waveform ``[T]`` (or ``[T, C]``)."""
        audio = self._channels(np.asarray(audio, dtype=np.float32))
        if self.sample_rate is not None and self.sample_rate != sample_rate:
            audio = resample(audio, sample_rate, self.sample_rate)
            sample_rate = self.sample_rate
        if self.pre_process is not None:
            audio = np.asarray(self.pre_process(audio=audio, sample_rate=sample_rate, random_state=self.random))
        if self.peak_normalization:
            peak = np.max(np.abs(audio)) if audio.size else 0.0
            if peak > 0:
                audio = audio / peak
        if self.preemphasis:
            emphasized = np.array(audio, dtype=np.float32)
            emphasized[1:] -= self.preemphasis * audio[:-1]
            audio = emphasized
        features = self._feature_function()(
            audio,
            sample_rate,
            window_len=self.window_len,
            step_len=self.step_len,
            num_feature_filters=self.num_feature_filters,
            **self.feature_options,
        )
        features = np.asarray(features)
        if features.ndim == 1:
            features = features[:, None]
        if self.with_delta:
            features = np.concatenate(
                [features] + [deltas(features, order) for order in range(1, 1 + self.with_delta)], 1
            )
        if self.norm_mean is not None:
            features = features - self.norm_mean
        if self.norm_std_dev is not None:
            features = features / self.norm_std_dev
        if self.join_frames:
            features = join_frames(features, self.join_frames)
        return features.astype(np.float32)

    def _channels(self, audio: np.ndarray) -> np.ndarray:
        if self.features == "raw" and self.num_channels not in (None, 1):
            if audio.ndim != 2 or audio.shape[1] != self.num_channels:
                raise DatasetError(f"expected audio with {self.num_channels} channels, got shape {audio.shape}")
            return audio
        if audio.ndim == 2:
            return audio.mean(axis=1)
        return audio

    def _feature_function(self) -> Callable[..., np.ndarray]:
        if callable(self.features):
            return self.features
        return FEATURE_FUNCTIONS[self.features]


def _load_norm(value: Any, option: str) -> np.ndarray | float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, (str, os.PathLike)):
        try:
            return np.loadtxt(value, dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"audio option {option!r}: cannot read {os.fspath(value)!r}: {exc}") from exc
    return np.asarray(value, dtype=np.float32)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling along the first axis in the frequency domain (the signal is treated as periodic, so
    the first and last few samples may ring slightly)."""
    num_out = round(len(audio) * to_rate / from_rate)
    if len(audio) == 0 or num_out == 0:
        return np.zeros((num_out,) + audio.shape[1:], dtype=np.float32)
    spectrum = np.fft.rfft(audio.astype(np.float64), axis=0)
    resized = np.zeros((num_out // 2 + 1,) + audio.shape[1:], dtype=complex)
    keep = min(len(resized), len(spectrum))
    resized[:keep] = spectrum[:keep]
    return (np.fft.irfft(resized, num_out, axis=0) * (num_out / len(audio))).astype(np.float32)


def join_frames(features: np.ndarray, num: int) -> np.ndarray:
    """Stack ``num`` consecutive frames into one: ``[T, D] -> [ceil(T / num), num * D]`` (zero padding at the end)."""
    pad = -len(features) % num
    if pad:
        features = np.concatenate([features, np.zeros((pad,) + features.shape[1:], features.dtype)])
    return features.reshape(len(features) // num, num * features.shape[1])


# --------------------------------------------------------------------------------------------------
# Signal processing


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above (27 mel per factor 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]``, each scaled to unit area in the mel domain (Slaney)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    bin_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    offsets = edges[:, None] - bin_freqs[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def stft(audio: np.ndarray, n_fft: int, hop_length: int, win_length: int | None = None) -> np.ndarray:
    """Short-time Fourier transform of centred frames: ``[1 + len(audio) // hop_length, n_fft // 2 + 1]`` complex."""
    win_length = n_fft if win_length is None else win_length
    if win_length > n_fft:
        raise DatasetError(f"audio window of {win_length} samples is longer than the FFT size {n_fft}")
    window = np.zeros(n_fft)
    start = (n_fft - win_length) // 2
    window[start : start + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    frames = _frames(audio, n_fft, hop_length)
    return np.fft.rfft(frames * window, axis=1)


def _frames(audio: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Centred frames ``[1 + len // hop, frame_length]`` of the zero-padded signal."""
    padded = np.pad(np.asarray(audio, dtype=np.float64), frame_length // 2)
    if len(padded) < frame_length:
        padded = np.pad(padded, (0, frame_length - len(padded)))
    return np.lib.stride_tricks.sliding_window_view(padded, frame_length)[::hop_length]


def frame_rms(audio: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Root mean square of each centred (unwindowed) frame: ``[frames]``."""
    return np.sqrt(np.mean(_frames(audio, frame_length, hop_length) ** 2, axis=1))


def power_to_db(power: np.ndarray, amin: float = 1e-10, top_db: float | None = 80.0) -> np.ndarray:
    """``10 * log10(power)``, floored at ``amin`` and at ``top_db`` below the maximum."""
    db = 10.0 * np.log10(np.maximum(amin, power))
    if top_db is not None and db.size:
        db = np.maximum(db, db.max() - top_db)
    return db


def dct_ortho(x: np.ndarray, num: int) -> np.ndarray:
    """The first ``num`` coefficients of the orthonormal DCT-II along the last axis."""
    n = x.shape[-1]
    k = np.arange(num)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return x @ basis.T


def deltas(features: np.ndarray, order: int = 1, width: int = 9) -> np.ndarray:
    """Time derivative of ``features`` ``[T, D]`` as librosa's ``delta``.

    That is a Savitzky-Golay filter with polynomial order = derivative order over ``width`` frames. At the edges the
    derivative of the polynomial fitted to the first (last) ``width`` frames is used, which is constant because the
    polynomial's degree equals the derivative's order: the edge frames repeat the nearest inner value. Sequences
    shorter than ``width`` use a window as long as they are (rounded down to odd).
    """
    num_frames = len(features)
    width = min(width, num_frames if num_frames % 2 else num_frames - 1)
    if width <= order:
        return np.zeros(features.shape)
    half = width // 2
    vandermonde = np.vander(np.arange(width) - half, order + 1, increasing=True)
    weights = math.factorial(order) * np.linalg.pinv(vandermonde)[order]
    inner = np.lib.stride_tricks.sliding_window_view(features, width, axis=0) @ weights  # [T - width + 1, D]
    return np.concatenate([np.repeat(inner[:1], half, 0), inner, np.repeat(inner[-1:], half, 0)])


# --------------------------------------------------------------------------------------------------
# Feature functions: f(audio, sample_rate, window_len, step_len, num_feature_filters, **options) -> [T, D]


def _sizes(sample_rate: int, window_len: float, step_len: float) -> tuple[int, int]:
    return int(window_len * sample_rate), int(step_len * sample_rate)


def mel_power(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """Mel power spectrogram ``[T, n_mels]``."""
    n_fft, hop = _sizes(sample_rate, window_len, step_len)
    power = np.abs(stft(audio, n_fft, hop)) ** 2
    return power @ mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).T


def raw_features(audio: np.ndarray, sample_rate: int, **_options: Any) -> np.ndarray:
    """The waveform as ``[T, C]``."""
    return audio[:, None] if audio.ndim == 1 else audio


def mfcc(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    num_feature_filters: int,
    n_mels: int = 128,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """MFCCs ``[T, num_feature_filters]`` with the frame's RMS energy as the first coefficient."""
    mel_db = power_to_db(mel_power(audio, sample_rate, window_len, step_len, n_mels, fmin, fmax))
    coefficients = dct_ortho(mel_db, num_feature_filters)
    n_fft, hop = _sizes(sample_rate, window_len, step_len)
    coefficients[:, 0] = frame_rms(audio, n_fft, hop)
    return coefficients


def log_mel_filterbank(
    audio: np.ndarray, sample_rate: int, window_len: float, step_len: float, num_feature_filters: int, **options: Any
) -> np.ndarray:
    """``log10`` of the mel power, floored at 1e-3: ``[T, num_feature_filters]``."""
    power = mel_power(audio, sample_rate, window_len, step_len, num_feature_filters, **options)
    return np.log10(np.maximum(1e-3, power))


def db_mel_filterbank(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    num_feature_filters: int,
    min_amp: float = 1e-10,
    **options: Any,
) -> np.ndarray:
    """``20 * log10`` of the mel power, floored at ``min_amp``: ``[T, num_feature_filters]``."""
    power = mel_power(audio, sample_rate, window_len, step_len, num_feature_filters, **options)
    return 20.0 * np.log10(np.maximum(min_amp, power))


def linear_spectrogram(
    audio: np.ndarray, sample_rate: int, window_len: float, step_len: float, num_feature_filters: int
) -> np.ndarray:
    """STFT magnitudes ``[T, num_feature_filters]`` (FFT size ``2 * num_feature_filters``, the Nyquist bin dropped)."""
    win_length, hop = _sizes(sample_rate, window_len, step_len)
    return np.abs(stft(audio, 2 * num_feature_filters, hop, win_length=win_length))[:, :-1]


FEATURE_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "raw": raw_features,
    "mfcc": mfcc,
    "log_mel_filterbank": log_mel_filterbank,
    "db_mel_filterbank": db_mel_filterbank,
    "linear_spectrogram": linear_spectrogram,
}
