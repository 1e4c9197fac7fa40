"""Unit tests for relay.secret.Secret."""

from __future__ import annotations

import logging
import pickle

import pytest

from relay.secret import Secret


def test_secret_never_shows_its_value(caplog: pytest.LogCaptureFixture) -> None:
    """repr, str, format and logging of a Secret print *** only."""
    secret = Secret("hunter2-token")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("t").debug("value %s %r", secret, secret)
    rendered = [repr(secret), str(secret), f"{secret}", f"{secret!r}", caplog.text, repr([secret])]
    assert all("hunter2" not in text for text in rendered)
    assert secret.reveal() == "hunter2-token"


def test_secret_equality_and_refusal_to_pickle() -> None:
    """Secrets compare by value and cannot be pickled (so they are not written by accident)."""
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret(Secret("x")).reveal() == "x"
    with pytest.raises(TypeError):
        pickle.dumps(Secret("a"))
