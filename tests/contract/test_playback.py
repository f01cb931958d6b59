"""The listener's playback clock at a seam, with the times given (no clock, no timing
assertion): slack, gaps and where playback resumes."""

import pytest

from contract.playback import PlaybackClock

CHUNK = 1920 * 3  # 0.24 s of audio


def _run(times: list[float], samples: int = CHUNK):
    clock = PlaybackClock()
    for t in times:
        clock.delivered(t, samples)
    return clock.summary()


def test_chunks_ahead_of_the_listener_never_underrun():
    # 0.24 s chunks every 0.1 s: the buffer grows; the least slack is at the second chunk
    summary = _run([0.0, 0.1, 0.2, 0.3])
    assert summary.underruns == 0 and summary.gap_s == 0
    assert summary.min_slack_s == pytest.approx(0.24 - 0.1)


def test_a_late_chunk_is_one_gap_of_its_lateness_and_playback_resumes_with_it():
    # the third chunk arrives 0.3 s after the second ran out (at 0.48 s): one gap of 0.3 s;
    # the listener then plays from 0.78 s, so the fourth, 0.2 s later, is in time
    summary = _run([0.0, 0.24, 0.78, 0.98])
    assert summary.underruns == 1 and summary.gap_s == pytest.approx(0.3)
    assert summary.min_slack_s == pytest.approx(-0.3)


def test_exactly_in_time_is_not_a_gap_and_every_late_chunk_counts():
    assert _run([0.0, 0.24, 0.48]).underruns == 0
    slow = _run([0.0, 0.3, 0.6, 0.9])  # 0.06 s late each time, measured from the resumed playback
    assert slow.underruns == 3 and slow.gap_s == pytest.approx(0.18)


def test_one_chunk_has_no_slack_to_measure():
    summary = _run([5.0])
    assert summary.min_slack_s is None and summary.underruns == 0


def test_waiting_for_the_clients_text_is_not_a_gap_but_a_late_chunk_after_it_is():
    clock = PlaybackClock()
    clock.delivered(0.0, CHUNK)  # 0.24 s out; the text runs out, the stream waits for more
    clock.wait_input()
    assert clock.slack(5.0) is None  # the listener's silence is the client's: nothing is behind
    clock.input_arrived(5.0)  # more text, long after the listener ran dry: playback starts anew
    clock.delivered(5.1, CHUNK)
    clock.delivered(5.2, CHUNK)
    assert clock.summary().underruns == 0 and clock.summary().min_slack_s == pytest.approx(0.14)
    clock.wait_input()
    clock.input_arrived(5.3)  # text came while the listener still had audio: it must be fed in time
    clock.delivered(5.8, CHUNK)  # 0.48 s were out from 5.1: ran dry at 5.58
    assert clock.summary().underruns == 1 and clock.summary().gap_s == pytest.approx(0.22)
