"""The leak check every test applies to what clients are told (tests/conftest.py)."""

import pytest

from tests.conftest import assert_no_leak


def test_the_leak_check_catches_node_details():
    """The control: each kind of internal detail is caught; a 500's own request id is not."""
    for leak in ("at 10.0.3.17:8000", "node 6b1f0e3c9a8d7f2e4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c", "pid=12",
                 'File "x.py", line 3', "/tmp/voices/x"):
        with pytest.raises(AssertionError):
            assert_no_leak(leak)
    assert_no_leak("The server had an error (request id req_0123456789abcdef0123456789abcdef)")
