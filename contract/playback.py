"""A listener's playback clock for one stream, kept where the bytes leave the server (each
edge, serve/speech.py) and where they leave a replica (its pipeline, for admission).

The assumed listener starts playing the moment the first audio chunk has been handed to the
transport and then consumes 24,000 samples a second; it buffers nothing beyond what it has
been sent (no jitter buffer): the strictest client, so a real one with a buffer hears at
most these gaps. Slack is audio delivered minus audio played: below zero when the next
chunk is delivered, the listener has heard a gap (an underrun) of that length, and its
playback resumes with that chunk. Times are passed in (monotonic seconds), so the rule is
tested without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.params import SAMPLE_RATE_HZ


@dataclass(frozen=True)
class PlaybackSummary:
    """One stream, once it ended: its lowest slack (seconds; None: fewer than two chunks, so
    never measured), how many times and for how long in all its listener heard silence."""

    min_slack_s: float | None
    underruns: int
    gap_s: float
    max_gap_s: float = 0.0  # the longest single gap


class PlaybackClock:
    def __init__(self) -> None:
        self._start: float | None = None  # when the listener's position was 0 (shifted by every gap)
        self._delivered_s = 0.0
        self._min_slack: float | None = None
        self._underruns = 0
        self._gap_s = 0.0
        self._max_gap_s = 0.0
        self._is_waiting = False  # for the client's text (wait_input)

    def wait_input(self) -> None:
        """The stream has spoken all the text it was given and waits for more (the client's
        pace, not the server's): the listener's silence from now on is not a gap until
        `input_arrived`."""
        self._is_waiting = True

    def input_arrived(self, now: float) -> None:
        """More text came at `now`: a listener that ran dry meanwhile starts playing again with
        the next chunk (like a first chunk: its wait is not a gap); one that still has audio
        goes on, and must be fed before it runs out."""
        self._is_waiting = False
        if self._start is not None and self._delivered_s - (now - self._start) < 0:
            self._start, self._delivered_s = None, 0.0

    def delivered(self, now: float, num_samples: int) -> None:
        """A chunk of `num_samples` has left the server at `now`."""
        if self._start is None:
            self._start = now  # playback starts with the first chunk
        else:
            slack = self._delivered_s - (now - self._start)  # what was still unplayed when this arrived
            self._min_slack = slack if self._min_slack is None else min(self._min_slack, slack)
            if slack < 0:  # the listener ran dry for -slack seconds, and resumes now
                self._underruns += 1
                self._gap_s -= slack
                self._max_gap_s = max(self._max_gap_s, -slack)
                self._start -= slack
        self._delivered_s += num_samples / SAMPLE_RATE_HZ

    def slack(self, now: float) -> float | None:
        """Audio the listener still has unplayed at `now` (negative: it is hearing a gap now);
        None before the first chunk, and while the stream waits for the client's text."""
        if self._start is None or self._is_waiting:
            return None
        return self._delivered_s - (now - self._start)

    def summary(self) -> PlaybackSummary:
        return PlaybackSummary(self._min_slack, self._underruns, self._gap_s, self._max_gap_s)
