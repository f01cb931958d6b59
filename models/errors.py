"""The engine's errors, by what the caller should do about them. No torch: the edges map
these (and only these) to protocol errors; anything else is an internal error.

- `RequestError`: this request cannot be served as given (a client error); `param` names the
  field, `message` says why in words meant for the client.
- `Overloaded`: no capacity now; retry later.
- `EngineDeadError`: this engine stopped; another replica may serve the request.
- `EngineStepError`: a step failed (e.g. a device error); its requests were ended.
"""

from __future__ import annotations


class RequestError(ValueError):
    def __init__(self, param: str | None, message: str, code: str = "invalid_request") -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.param, self.message, self.code = param, message, code

    def __reduce__(self):  # pickles with its fields (it crosses process boundaries)
        return type(self), (self.param, self.message, self.code)


class Overloaded(RuntimeError):
    """No stream can start now. `retry_after_s`: when capacity is expected back (None: unknown)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return type(self), (str(self), self.retry_after_s)


class EngineDeadError(RuntimeError):
    """The engine loop has stopped; no request can be served by this engine any more."""


class EngineStepError(RuntimeError):
    """A step failed; the requests in flight were ended."""
