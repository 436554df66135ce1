"""The audio core: codec bit-exactness, resampler response, delay and stream continuity.

Every figure is measured here from the core's output on tones, impulses and noise; the limits
asserted are the requirements (passband 300-3400 Hz within +-0.5 dB, images and aliases 60 dB
down, at most 2.5 ms of delay each way, chunking invariance within 2 LSB).
"""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.audio import (
    FILTER_TAPS,
    AudioFormatError,
    StreamResampler,
    _design_lowpass,
    mulaw_decode,
    mulaw_encode,
)

UP, DOWN = (8000, 24000), (24000, 8000)
# REALTIME_AUDIO_RATE may be another multiple of 8 kHz: every property holds at 48 kHz too.
UP48, DOWN48 = (8000, 48000), (48000, 8000)
# GPT-Live also takes 16 kHz (REALTIME_SCHEMA=live, REALTIME_AUDIO_RATE=16000).
UP16, DOWN16 = (8000, 16000), (16000, 8000)
directions = pytest.mark.parametrize(
    "rates",
    [UP, DOWN, UP48, DOWN48, UP16, DOWN16],
    ids=["8k-24k", "24k-8k", "8k-48k", "48k-8k", "8k-16k", "16k-8k"],
)
FRAME_MS = 20


@pytest.fixture(scope="module")
def audioop() -> types.ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")  # gone in Python 3.13: the bit-exact tests skip


# --- helpers: signals and measurements ------------------------------------------------------


def tone(freq: float, rate: int, seconds: float = 0.5, amp: float = 16000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def noise(size: int, seed: int = 0, scale: float = 12000.0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(size) * scale
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def stream(
    rates: tuple[int, int], x: np.ndarray, chunk: int | list[int] | None = None
) -> np.ndarray:
    """``x`` through one resampler: whole, in chunks of ``chunk`` samples, or in chunks of the
    listed sizes followed by the rest."""
    r = StreamResampler(*rates)
    if chunk is None:
        return r.process(x)
    cuts = np.cumsum(chunk) if isinstance(chunk, list) else range(chunk, x.size, chunk)
    return np.concatenate([r.process(part) for part in np.split(x, list(cuts))])


def steady(y: np.ndarray, rate: int) -> np.ndarray:
    """Drop the first 10 ms: the filter (4 ms long) has settled after that."""
    return y[rate // 100 :].astype(np.float64)


def sine_fit(y: np.ndarray, freq: float, rate: int) -> tuple[float, np.ndarray]:
    """Amplitude of the least-squares sine of ``freq`` in ``y``, and the residual."""
    w = 2 * np.pi * freq * np.arange(y.size) / rate
    basis = np.column_stack([np.sin(w), np.cos(w), np.ones_like(w)])
    coef = np.linalg.lstsq(basis, y, rcond=None)[0]
    return float(np.hypot(coef[0], coef[1])), y - basis @ coef


def band_db(y: np.ndarray, rate: int, freq: float, lo: float, hi: float) -> float:
    """Energy in ``lo``-``hi`` Hz relative to the tone at ``freq`` (Hann-windowed spectrum)."""
    power = np.abs(np.fft.rfft(y * np.hanning(y.size))) ** 2
    f = np.fft.rfftfreq(y.size, 1 / rate)
    tone_energy = power[np.abs(f - freq) <= 20].sum()
    return float(10 * np.log10(power[(f >= lo) & (f <= hi)].sum() / tone_energy))


def reference(rates: tuple[int, int], x: np.ndarray) -> np.ndarray:
    """The filter applied the plain way (zero-stuff or keep every R-th), unrounded."""
    xf = x.astype(np.float64)
    ratio = max(rates) // 8000
    taps = FILTER_TAPS if ratio == 3 else _design_lowpass(ratio)
    if rates[1] > rates[0]:
        stuffed = np.zeros(ratio * x.size)
        stuffed[::ratio] = xf
        return np.convolve(stuffed, ratio * taps)[: stuffed.size]
    return np.convolve(xf, taps)[: x.size][::ratio]


def as_int16(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


# --- G.711 mu-law -----------------------------------------------------------------------------


def test_decode_is_bit_exact_with_audioop_on_all_256_codes(audioop: types.ModuleType) -> None:
    codes = bytes(range(256))
    expected = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16)
    decoded = mulaw_decode(codes)
    assert decoded.dtype == np.int16
    assert np.array_equal(decoded, expected)


def test_encode_is_bit_exact_with_audioop_on_all_65536_values(audioop: types.ModuleType) -> None:
    samples = np.arange(-32768, 32768).astype(np.int16)
    assert mulaw_encode(samples) == audioop.lin2ulaw(samples.tobytes(), 2)


def test_encode_takes_arrays_and_pcm16_buffers_alike() -> None:
    samples = noise(999, seed=3)
    expected = mulaw_encode(samples)
    pcm = samples.tobytes()
    for buffer in (pcm, bytearray(pcm), memoryview(pcm), memoryview(samples)):
        assert mulaw_encode(buffer) == expected
    assert mulaw_encode(samples[::2]) == mulaw_encode(samples[::2].copy())  # strided views too


def test_round_trip_keeps_codes_and_stays_within_one_step() -> None:
    codes = bytes(range(256))
    again = mulaw_encode(mulaw_decode(codes))
    # Every code survives decode -> encode except negative zero (0x7F), which becomes 0xFF.
    assert [c for c in range(256) if again[c] != c] == [0x7F]
    assert again[0x7F] == 0xFF

    samples = np.arange(-32768, 32768).astype(np.int16)
    back = mulaw_decode(mulaw_encode(samples)).astype(np.int64)
    assert np.all(np.diff(back) >= 0)  # monotonic
    levels = np.unique(mulaw_decode(codes).astype(np.int64))
    gaps = np.diff(levels)
    at = np.searchsorted(levels, back)
    step = np.minimum(np.r_[gaps[0], gaps][at], np.r_[gaps, gaps[-1]][at])
    error = np.abs(back - samples)
    inside = np.abs(samples.astype(np.int64)) <= 32635  # G.711 clips beyond
    assert np.all(error[inside] <= step[inside]), f"worst {np.max(error[inside] / step[inside])}"


def test_empty_input_gives_empty_output() -> None:
    assert mulaw_decode(b"").dtype == np.int16 and mulaw_decode(b"").size == 0
    assert mulaw_encode(np.zeros(0, dtype=np.int16)) == b""
    assert mulaw_encode(b"") == b""
    for rates in (UP, DOWN):
        out = StreamResampler(*rates).process(np.zeros(0, dtype=np.int16))
        assert out.dtype == np.int16 and out.size == 0


@pytest.mark.parametrize(
    "odd",
    [b"\x00", b"\x00\x01\x02", bytearray(161), memoryview(b"abc")],
    ids=["1", "3", "161", "mv3"],
)
def test_odd_length_pcm16_is_refused_with_its_length(odd: bytes) -> None:
    with pytest.raises(AudioFormatError, match=str(len(bytes(odd)))):
        mulaw_encode(odd)


def test_wrong_arrays_and_rates_are_refused() -> None:
    assert issubclass(AudioFormatError, ValueError)
    for bad in (np.zeros(4, dtype=np.int32), np.zeros((2, 4), dtype=np.int16)):
        with pytest.raises(AudioFormatError):
            mulaw_encode(bad)
        with pytest.raises(AudioFormatError):
            StreamResampler(*UP).process(bad)
    with pytest.raises(AudioFormatError):
        StreamResampler(*DOWN).process(np.zeros(4, dtype=np.float32))
    for rates in (
        (12000, 8000),
        (8000, 12000),
        (8000, 8000),
        (24000, 24000),
        (48000, 16000),
        (8000, 44100),
        (28000, 8000),
    ):
        with pytest.raises(ValueError, match=str(rates[0])):
            StreamResampler(*rates)


# --- resampler: frequency response -------------------------------------------------------------

PASSBAND = range(300, 3401, 100)


@directions
def test_passband_300_to_3400_hz_is_flat_within_half_a_db(rates: tuple[int, int]) -> None:
    src, dst = rates
    gains = []
    for freq in PASSBAND:
        x = tone(freq, src, 0.2)
        amp_in, _ = sine_fit(steady(x, src), freq, src)
        amp_out, _ = sine_fit(steady(stream(rates, x, src * FRAME_MS // 1000), dst), freq, dst)
        gains.append(20 * np.log10(amp_out / amp_in))
    worst = float(np.max(np.abs(gains)))
    assert worst <= 0.5, (
        f"worst passband deviation {worst:.3f} dB at {PASSBAND[np.argmax(np.abs(gains))]} Hz"
    )


def test_upsampling_images_are_at_least_60_db_down() -> None:
    levels = {}
    for freq in [*range(300, 3400, 200), 3400]:
        y = steady(stream(UP, tone(freq, 8000, 0.5), 160), 24000)
        levels[int(freq)] = band_db(y, 24000, freq, 4600, 12000)
    worst = max(levels, key=levels.__getitem__)
    assert levels[worst] <= -60, f"images {levels[worst]:.1f} dB for a {worst} Hz tone"


def test_downsampling_aliases_are_at_least_60_db_down() -> None:
    levels = {}
    for freq in range(4700, 11001, 300):
        x = tone(freq, 24000, 0.5)
        y = steady(stream(DOWN, x, 480), 8000)
        # Everything that comes out is alias (the tone itself is above 4 kHz).
        # An output that rounds to silence counts as the rounding floor (1/12 LSB squared).
        out_power = max(float(np.mean(y**2)), 1 / 12)
        levels[int(freq)] = 10 * np.log10(out_power / np.mean(steady(x, 24000) ** 2))
    worst = max(levels, key=levels.__getitem__)
    assert levels[worst] <= -60, f"aliases {levels[worst]:.1f} dB for a {worst} Hz tone"


# --- resampler: delay ---------------------------------------------------------------------------


@directions
def test_delay_is_at_most_2_5_ms_and_nothing_is_held_back(rates: tuple[int, int]) -> None:
    src, dst = rates
    # Held back: after each chunk, outputs whose centre sample has arrived but were not given.
    r, fed, given_out, held = StreamResampler(*rates), 0, 0, 0
    for size in [160, 1, 2, 7, 480, 33, 5, 0, 96, 161]:
        given_out += r.process(noise(size, seed=size)).size
        fed += size
        computable = fed * dst // src if dst > src else -(-fed // (src // dst))
        held = max(held, computable - given_out)
        assert given_out <= computable
    # Where an impulse comes out, for impulses at each position within one output sample.
    delays = []
    for position in range(src // dst if src > dst else 1):
        impulse = np.zeros(src // 50, dtype=np.int16)
        impulse[position] = 30000
        out = stream(rates, impulse, src * FRAME_MS // 1000 // 2)
        delays.append(np.argmax(np.abs(out)) / dst - position / src)
    delay_ms = 1000 * (max(delays) + held / dst)
    assert held == 0
    assert delay_ms <= 2.5, f"delay {delay_ms:.3f} ms"


# --- resampler: streaming -----------------------------------------------------------------------


@directions
def test_20_ms_and_7_ms_chunks_give_the_same_stream(rates: tuple[int, int]) -> None:
    src, dst = rates
    x = tone(700, src) // 2 + tone(2100, src) // 3 + noise(src // 2, scale=2000) // 2
    a = stream(rates, x, src * 20 // 1000)
    b = stream(rates, x, src * 7 // 1000)
    assert a.size == b.size == (x.size * dst // src if src == 8000 else -(-x.size // (src // dst)))
    worst = int(np.abs(a.astype(np.int32) - b).max())
    assert worst <= 2, f"{worst} LSB apart"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 1500), min_size=1, max_size=25),
    st.sampled_from([UP, DOWN]),
    st.integers(0, 2**16),
)
def test_any_chunking_gives_the_same_stream(
    chunks: list[int], rates: tuple[int, int], seed: int
) -> None:
    x = noise(sum(chunks), seed=seed, scale=20000)  # loud: saturation inside too
    whole = StreamResampler(*rates).process(x)
    pieced = stream(rates, x, chunks)
    assert pieced.size == whole.size
    assert np.abs(whole.astype(np.int32) - pieced).max(initial=0) <= 2


@directions
def test_stream_is_exactly_the_plain_filter_whatever_the_chunks(rates: tuple[int, int]) -> None:
    # The polyphase blocks compute the same sums as a plain convolution, exactly (the taps sit on
    # a 2**-24 grid, so float64 arithmetic is exact and the output is bit-identical).
    src, _ = rates
    x = noise(src, seed=7)
    expected = as_int16(reference(rates, x))
    for chunk in (None, src // 50, src * 7 // 1000, [1, 2, 3, 5, 8, 13, 0, 2000, 4]):
        assert np.array_equal(stream(rates, x, chunk), expected), f"chunks {chunk}"


@directions
def test_frames_join_without_clicks(rates: tuple[int, int]) -> None:
    src, dst = rates
    freq, frame_out = 1000, dst * FRAME_MS // 1000
    y = steady(stream(rates, tone(freq, src, 0.5), src * FRAME_MS // 1000), dst)
    _, residual = sine_fit(y, freq, dst)
    # Output samples next to a frame boundary (first of a frame and the one before it).
    start = dst // 100
    edge = np.zeros(y.size, dtype=bool)
    boundaries = np.arange(frame_out - start % frame_out, y.size, frame_out)
    edge[boundaries] = edge[boundaries - 1] = True
    at_joins, inside = np.abs(residual[edge]).max(), np.abs(residual[~edge]).max()
    # A join that lost or repeated history would leave an error of hundreds or thousands of LSB.
    assert at_joins <= max(inside, 1.0) + 1.0, f"{at_joins:.2f} LSB at joins, {inside:.2f} inside"
    assert inside <= 4, f"a clean tone left {inside:.2f} LSB of residual"


@directions
def test_output_saturates_and_never_wraps(rates: tuple[int, int]) -> None:
    src, _ = rates
    period = src // 200  # a full-scale square wave: the filter's Gibbs overshoot exceeds int16
    square = np.where(np.arange(src // 5) % period < period // 2, 32767, -32768).astype(np.int16)
    ideal = reference(rates, square)
    y = stream(rates, square, src * FRAME_MS // 1000)
    assert ideal.max() > 32767.5 and ideal.min() < -32768.5  # the test does exercise saturation
    assert np.array_equal(y, as_int16(ideal))
    assert y.max() == 32767 and y.min() == -32768


def test_reset_forgets_the_stream_and_outputs_are_not_reused() -> None:
    for rates in (UP, DOWN):
        x = noise(rates[0] // 10, seed=11)
        r = StreamResampler(*rates)
        first = r.process(x[:101])
        kept = first.copy()
        r.process(x[101:])  # later calls must not write into arrays handed out before
        assert np.array_equal(first, kept)
        r.reset()
        assert np.array_equal(r.process(x), StreamResampler(*rates).process(x))


def test_16_khz_images_and_aliases_are_at_least_60_db_down() -> None:
    """GPT-Live's 16 kHz: the same stop band as 24 kHz (4.6 kHz up to the new Nyquist)."""
    for freq in (300, 1000, 3400):
        y = steady(stream(UP16, tone(freq, 8000, 0.5), 160), 16000)
        assert band_db(y, 16000, freq, 4600, 8000) <= -60, freq
    for freq in (4700, 6000, 7500):
        x = tone(freq, 16000, 0.5)
        y = steady(stream(DOWN16, x, 320), 8000)
        out_power = max(float(np.mean(y**2)), 1 / 12)
        assert 10 * np.log10(out_power / np.mean(steady(x, 16000) ** 2)) <= -60, freq
