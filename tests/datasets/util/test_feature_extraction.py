"""Tests for returnn.datasets.util.feature_extraction, against straightforward reference computations."""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest

from returnn.datasets.util.feature_extraction import (
    ExtractAudioFeatures,
    dct_ortho,
    deltas,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    read_audio,
    stft,
)
from returnn.errors import DatasetError

SAMPLE_RATE = 8000


def noise(num_samples: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-0.5, 0.5, num_samples).astype(np.float32)


def reference_stft(audio: np.ndarray, n_fft: int, hop: int, win_length: int) -> np.ndarray:
    """Explicit DFT of each centred, Hann-windowed frame."""
    padded = np.concatenate([np.zeros(n_fft // 2), audio.astype(np.float64), np.zeros(n_fft // 2)])
    offset = (n_fft - win_length) // 2
    window = np.zeros(n_fft)
    for n in range(win_length):
        window[offset + n] = 0.5 * (1 - math.cos(2 * math.pi * n / win_length))
    num_frames = 1 + len(audio) // hop
    n = np.arange(n_fft)
    result = np.zeros((num_frames, n_fft // 2 + 1), dtype=complex)
    for t in range(num_frames):
        frame = padded[t * hop : t * hop + n_fft] * window
        for k in range(n_fft // 2 + 1):
            result[t, k] = np.sum(frame * np.exp(-2j * math.pi * k * n / n_fft))
    return result


def reference_dct(x: np.ndarray, num: int) -> np.ndarray:
    n = x.shape[-1]
    out = np.zeros(x.shape[:-1] + (num,))
    for k in range(num):
        scale = math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n)
        out[..., k] = scale * sum(x[..., i] * math.cos(math.pi * k * (2 * i + 1) / (2 * n)) for i in range(n))
    return out


# ------------------------------------------------------------------------------------------------ building blocks


def test_slaney_mel_scale_known_values():
    np.testing.assert_allclose(hz_to_mel([0.0, 200.0, 1000.0, 6400.0]), [0.0, 3.0, 15.0, 42.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel([123.0, 999.0, 1001.0, 7000.0])), [123.0, 999.0, 1001.0, 7000.0])


def test_mel_filters_are_unit_area_triangles_peaking_at_their_centres():
    n_fft, n_mels = 4096, 10
    weights = mel_filterbank(SAMPLE_RATE, n_fft, n_mels)
    assert weights.shape == (n_mels, n_fft // 2 + 1)
    bin_hz = SAMPLE_RATE / n_fft
    np.testing.assert_allclose(weights.sum(axis=1) * bin_hz, 1.0, rtol=2e-2)
    centres = mel_to_hz(np.linspace(0, hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))[1:-1]
    np.testing.assert_allclose(weights.argmax(axis=1) * bin_hz, centres, atol=bin_hz)
    edges = mel_to_hz(np.linspace(0, hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    for i in range(n_mels):
        outside = (np.arange(n_fft // 2 + 1) * bin_hz <= edges[i]) | (
            np.arange(n_fft // 2 + 1) * bin_hz >= edges[i + 2]
        )
        assert np.all(weights[i][outside] == 0)


def test_stft_matches_explicit_dft():
    audio = noise(333)
    np.testing.assert_allclose(stft(audio, 64, 16), reference_stft(audio, 64, 16, 64), atol=1e-9)
    np.testing.assert_allclose(stft(audio, 64, 10, win_length=50), reference_stft(audio, 64, 10, 50), atol=1e-9)


def test_dct_matches_explicit_sum():
    x = np.random.RandomState(1).randn(3, 12)
    np.testing.assert_allclose(dct_ortho(x, 5), reference_dct(x, 5), atol=1e-12)


def test_deltas_of_polynomials_and_regression_formula():
    t = np.arange(20, dtype=np.float64)[:, None]
    np.testing.assert_allclose(deltas(3 * t + 1, order=1), 3.0, atol=1e-9)
    np.testing.assert_allclose(deltas(t**2, order=2), 2.0, atol=1e-9)
    x = np.random.RandomState(2).randn(15, 3)
    expected = sum(n * (x[4 + n : 11 + n] - x[4 - n : 11 - n]) for n in range(1, 5)) / (
        2 * sum(n * n for n in range(1, 5))
    )
    result = deltas(x)
    np.testing.assert_allclose(result[4:11], expected, atol=1e-12)
    np.testing.assert_allclose(result[:4], np.repeat(expected[:1], 4, 0), atol=1e-12)
    assert deltas(x[:1]).tolist() == [[0.0, 0.0, 0.0]]


# ------------------------------------------------------------------------------------------------ feature types


def test_raw_with_peak_normalization_and_preemphasis():
    audio = np.array([0.25, -0.5, 0.125, 0.0], dtype=np.float32)
    plain = ExtractAudioFeatures(features="raw", peak_normalization=False).get_audio_features(audio, SAMPLE_RATE)
    assert plain.dtype == np.float32 and plain.tolist() == [[0.25], [-0.5], [0.125], [0.0]]
    extractor = ExtractAudioFeatures(features="raw", peak_normalization=True, preemphasis=0.5)
    assert extractor.get_feature_dimension() == 1
    # normalised: [0.5, -1, 0.25, 0]; pre-emphasis y[t] = x[t] - 0.5 x[t-1]
    assert extractor.get_audio_features(audio, SAMPLE_RATE).tolist() == [[0.5], [-1.25], [0.75], [-0.125]]


def test_mfcc_against_reference_pipeline():
    audio = noise(800)
    extractor = ExtractAudioFeatures(features="mfcc", num_feature_filters=13, peak_normalization=False)
    features = extractor.get_audio_features(audio, SAMPLE_RATE)
    n_fft, hop = 200, 80
    assert features.shape == (1 + 800 // hop, 13)
    power = np.abs(reference_stft(audio, n_fft, hop, n_fft)) ** 2
    mel_db = 10 * np.log10(np.maximum(1e-10, power @ mel_filterbank(SAMPLE_RATE, n_fft, 128).T))
    mel_db = np.maximum(mel_db, mel_db.max() - 80)
    expected = reference_dct(mel_db, 13)
    padded = np.concatenate([np.zeros(n_fft // 2), audio, np.zeros(n_fft // 2)])
    expected[:, 0] = [math.sqrt(np.mean(padded[t * hop : t * hop + n_fft] ** 2.0)) for t in range(len(expected))]
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-3)


def test_log_and_db_mel_filterbanks():
    audio = noise(400, seed=3)
    power = np.abs(reference_stft(audio, 200, 80, 200)) ** 2 @ mel_filterbank(SAMPLE_RATE, 200, 20).T
    log_mel = ExtractAudioFeatures(features="log_mel_filterbank", num_feature_filters=20, peak_normalization=False)
    np.testing.assert_allclose(
        log_mel.get_audio_features(audio, SAMPLE_RATE), np.log10(np.maximum(1e-3, power)), atol=1e-5
    )
    db_mel = ExtractAudioFeatures(features="db_mel_filterbank", num_feature_filters=20, peak_normalization=False)
    np.testing.assert_allclose(
        db_mel.get_audio_features(audio, SAMPLE_RATE), 20 * np.log10(np.maximum(1e-10, power)), rtol=1e-5, atol=1e-4
    )


def test_linear_spectrogram_finds_a_sine():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    audio = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    extractor = ExtractAudioFeatures(features="linear_spectrogram", num_feature_filters=128, window_len=0.025)
    features = extractor.get_audio_features(audio, SAMPLE_RATE)
    assert features.shape == (101, 128)
    assert set(features[5:-5].argmax(axis=1).tolist()) == {1000 * 256 // SAMPLE_RATE}
    np.testing.assert_allclose(features[3], np.abs(reference_stft(audio[:800], 256, 80, 200))[3, :-1], atol=1e-3)


def test_deltas_normalization_and_join_frames(tmp_path):
    audio = noise(SAMPLE_RATE)
    base = ExtractAudioFeatures(num_feature_filters=8).get_audio_features(audio, SAMPLE_RATE)
    assert base.shape == (101, 8)
    np.savetxt(tmp_path / "mean.txt", np.arange(24.0))
    extractor = ExtractAudioFeatures(
        num_feature_filters=8, with_delta=2, norm_mean=str(tmp_path / "mean.txt"), norm_std_dev=2.0, join_frames=3
    )
    assert extractor.get_feature_dimension() == 72
    features = extractor.get_audio_features(audio, SAMPLE_RATE)
    assert features.shape == (34, 72)
    unjoined = np.concatenate([base, deltas(base, 1), deltas(base, 2)], axis=1)
    np.testing.assert_allclose(features[0, :24], (unjoined[0] - np.arange(24.0)) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features[33, 48:], 0.0)  # the frame after the last one is padding


def test_pre_process_gets_a_seeded_random_state():
    calls = []

    def speed_up(*, audio, sample_rate, random_state):
        calls.append((len(audio), sample_rate, random_state.randint(1000)))
        return audio[::2]

    extractor = ExtractAudioFeatures(features="raw", pre_process=speed_up)
    extractor.set_random_seed(7)
    assert extractor.get_audio_features(noise(100), SAMPLE_RATE).shape == (50, 1)
    extractor.set_random_seed(7)
    extractor.get_audio_features(noise(100), SAMPLE_RATE)
    assert calls[0] == calls[1] == (100, SAMPLE_RATE, np.random.RandomState(7).randint(1000))


def test_channels_and_resampling():
    stereo = np.stack([noise(160), noise(160, seed=1)], axis=1)
    raw = ExtractAudioFeatures(features="raw", num_channels=2, peak_normalization=False)
    np.testing.assert_array_equal(raw.get_audio_features(stereo, SAMPLE_RATE), stereo)
    mono = ExtractAudioFeatures(features="raw", peak_normalization=False).get_audio_features(stereo, SAMPLE_RATE)
    np.testing.assert_allclose(mono[:, 0], stereo.mean(axis=1))
    with pytest.raises(DatasetError, match=r"expected audio with 2 channels, got shape \(160,\)"):
        raw.get_audio_features(noise(160), SAMPLE_RATE)
    sine = np.sin(2 * np.pi * 300 * np.arange(800) / SAMPLE_RATE)
    upsampled = ExtractAudioFeatures(features="raw", sample_rate=16000).get_audio_features(sine, SAMPLE_RATE)
    assert upsampled.shape == (1600, 1)
    np.testing.assert_allclose(upsampled[:, 0], np.sin(2 * np.pi * 300 * np.arange(1600) / 16000), atol=1e-4)
    downsampled = ExtractAudioFeatures(features="raw", sample_rate=4000).get_audio_features(sine, SAMPLE_RATE)
    np.testing.assert_allclose(downsampled[:, 0], np.sin(2 * np.pi * 300 * np.arange(400) / 4000), atol=1e-4)


def test_bad_options():
    with pytest.raises(DatasetError, match=r"unknown type 'fbank'; choose one of: raw, mfcc, log_mel_filterbank"):
        ExtractAudioFeatures(features="fbank")
    with pytest.raises(DatasetError, match=r"OggZipDataset 'audio': .*'num_filters'; valid options: window_len"):
        ExtractAudioFeatures.from_options({"num_filters": 3}, "OggZipDataset 'audio'")
    with pytest.raises(
        DatasetError, match=r"'random_permute' .* is not supported; do the perturbation in a 'pre_process'"
    ):
        ExtractAudioFeatures(random_permute={"rnd_zoom_switch": 1.0})
    with pytest.raises(DatasetError, match=r"num_channels=2: several channels only work with 'raw'"):
        ExtractAudioFeatures(features="mfcc", num_channels=2)


# ------------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_read_audio_formats(fmt):
    soundfile = pytest.importorskip("soundfile")
    audio = 0.5 * np.sin(np.arange(1600) / 5).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, 16000, format=fmt)
    decoded, sample_rate = read_audio(buffer.getvalue(), "test." + fmt.lower())
    assert sample_rate == 16000 and decoded.dtype == np.float32 and decoded.shape == (1600,)
    tolerance = 0.05 if fmt == "OGG" else 1e-4  # vorbis is lossy
    np.testing.assert_allclose(decoded, audio, atol=tolerance)


def test_features_from_the_bytes_of_an_audio_file():
    soundfile = pytest.importorskip("soundfile")
    audio = 0.25 * np.sin(np.arange(1600) / 3).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, 16000, format="WAV", subtype="FLOAT")
    extractor = ExtractAudioFeatures(features="raw", peak_normalization=False)
    features = extractor.get_audio_features_from_raw_bytes(buffer.getvalue(), seq_name="corpus/1")
    np.testing.assert_array_equal(features, audio[:, None])
    with pytest.raises(DatasetError, match=r"cannot decode audio file 'corpus/2': "):
        extractor.get_audio_features_from_raw_bytes(b"RIFF broken", seq_name="corpus/2")


def test_read_audio_errors(monkeypatch):
    pytest.importorskip("soundfile")
    with pytest.raises(DatasetError, match=r"cannot decode audio file 'corpus.zip/a.wav': "):
        read_audio(b"not audio at all", "'corpus.zip/a.wav'")
    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(
        DatasetError, match=r"reading audio \(x.wav\) needs the 'soundfile' package: pip install soundfile"
    ):
        read_audio(b"", "x.wav")
