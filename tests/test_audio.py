"""The audio core: codec bit-exactness, resampler response, delay and stream continuity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.audio import StreamResampler, mulaw_decode, mulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python 3.13+: the bit-exact tests skip
        audioop = None  # type: ignore[assignment]

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop not in this Python")


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


@needs_audioop
def test_decode_is_bit_exact_with_audioop_on_all_256_codes() -> None:
    codes = bytes(range(256))
    expected = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16)
    assert np.array_equal(mulaw_decode(codes), expected)


@needs_audioop
def test_encode_is_bit_exact_with_audioop_on_all_65536_values() -> None:
    samples = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    assert mulaw_encode(samples) == audioop.lin2ulaw(samples.tobytes(), 2)


def test_round_trip_is_stable_and_bytes_input_works() -> None:
    codes = bytes(range(256))
    decoded = mulaw_decode(codes)
    assert mulaw_encode(decoded) == mulaw_encode(decoded.tobytes())
    # Re-encoding a decoded value gives a code that decodes to the same value.
    assert np.array_equal(mulaw_decode(mulaw_encode(decoded)), decoded)
    assert mulaw_encode(np.zeros(0, dtype=np.int16)) == b""
    assert mulaw_decode(b"").size == 0


def test_odd_pcm_bytes_and_wrong_dtypes_are_refused() -> None:
    with pytest.raises(ValueError):
        mulaw_encode(b"\x00\x01\x02")
    with pytest.raises(ValueError):
        mulaw_encode(np.zeros(4, dtype=np.int32))
    with pytest.raises(ValueError):
        StreamResampler(16000, 8000)
    with pytest.raises(ValueError):
        StreamResampler(8000, 24000).process(np.zeros(4, dtype=np.float32))


@pytest.mark.parametrize("freq", [300, 500, 1000, 2000, 3000, 3400])
def test_passband_is_flat_within_half_a_db_both_ways(freq: float) -> None:
    x8 = tone(freq, 8000)
    up = StreamResampler(8000, 24000).process(x8)
    assert abs(20 * np.log10(rms(up[2400:]) / rms(x8[800:]))) <= 0.5
    x24 = tone(freq, 24000)
    down = StreamResampler(24000, 8000).process(x24)
    assert abs(20 * np.log10(rms(down[800:]) / rms(x24[2400:]))) <= 0.5


@pytest.mark.parametrize("freq", [300, 1000, 2500, 3400])
def test_upsampling_images_are_60_db_down(freq: float) -> None:
    y = StreamResampler(8000, 24000).process(tone(freq, 8000, 2.0))[4800:].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    freqs = np.fft.rfftfreq(y.size, 1 / 24000)
    peak = spectrum[np.argmin(np.abs(freqs - freq))]
    images = spectrum[(freqs >= 4600) & (freqs <= 12000)].max()
    assert 20 * np.log10(images / peak) <= -60


@pytest.mark.parametrize("freq", [4700, 5500, 7000, 9000, 11000])
def test_downsampling_aliases_are_60_db_down(freq: float) -> None:
    x = tone(freq, 24000, 2.0)
    y = StreamResampler(24000, 8000).process(x)[1600:]
    level = 20 * np.log10(max(rms(y), 1e-3) / rms(x))
    assert level <= -60


def _impulse_delay_ms(src: int, dst: int) -> float:
    impulse = np.zeros(src // 10, dtype=np.int16)
    impulse[0] = 30000
    out = StreamResampler(src, dst).process(impulse)
    # Nothing is held back: the output is as long as the input implies, at once.
    assert out.size == impulse.size * dst // src
    return float(np.argmax(np.abs(out))) / dst * 1000


def test_algorithmic_delay_is_at_most_2_5_ms_each_way() -> None:
    assert _impulse_delay_ms(8000, 24000) <= 2.5
    assert _impulse_delay_ms(24000, 8000) <= 2.5


def test_20ms_and_7ms_chunking_give_the_same_stream() -> None:
    for src, dst in ((8000, 24000), (24000, 8000)):
        x = tone(700, src, 1.0) + tone(2100, src, 1.0) // 2
        r20, r7 = StreamResampler(src, dst), StreamResampler(src, dst)
        a = np.concatenate([r20.process(x[i : i + src // 50]) for i in range(0, x.size, src // 50)])
        step = src * 7 // 1000
        b = np.concatenate([r7.process(x[i : i + step]) for i in range(0, x.size, step)])
        assert a.size == b.size
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 700), min_size=1, max_size=30),
    st.sampled_from([(8000, 24000), (24000, 8000)]),
)
def test_any_chunking_gives_the_same_stream(chunks: list[int], rates: tuple[int, int]) -> None:
    src, dst = rates
    x = tone(1234, src, 0.5)
    whole = StreamResampler(src, dst).process(x)
    r = StreamResampler(src, dst)
    parts, pos = [], 0
    for size in chunks:
        parts.append(r.process(x[pos : pos + size]))
        pos += size
    parts.append(r.process(x[pos:]))
    pieced = np.concatenate(parts)
    assert np.abs(whole.astype(int) - pieced.astype(int)).max() <= 2


def test_frames_join_without_clicks() -> None:
    x = tone(440, 8000, 1.0)
    r = StreamResampler(8000, 24000)
    y = np.concatenate([r.process(x[i : i + 160]) for i in range(0, x.size, 160)]).astype(int)
    # The largest sample-to-sample step of a clean 440 Hz tone at 24 kHz is about 2*pi*440/24000
    # of the amplitude; a join error would show as a much larger jump at a frame boundary.
    steps = np.abs(np.diff(y[480:]))
    assert steps.max() <= 8000 * 2 * np.pi * 440 / 24000 * 1.1


def test_full_scale_saturates_instead_of_wrapping() -> None:
    square = np.where(np.arange(800) % 40 < 20, 32767, -32768).astype(np.int16)
    y = StreamResampler(8000, 24000).process(square)
    assert y.max() == 32767 and y.min() == -32768  # Gibbs overshoot clipped, not wrapped
