"""GET /health and GET /ready: 200 {"status":true}, JSON."""

import pytest

from otpdlib import assert_ok


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_health_and_ready_answer_200(shared_otpd, path):
    assert_ok(shared_otpd.get(path))
