"""Webhook notifications (senti.notify) against a real HTTP receiver on a loopback port."""

from __future__ import annotations

import pytest

from senti import notify
from senti.config import ParamsError, load_params, parse_params
from tests.conftest import REPO


def test_an_event_is_posted_as_json_with_a_text_line(receiver):
    assert notify.post(receiver.url, "promotion.decision", "v2: promoted", model="m",
                       decision={"challenger": "2"})
    assert receiver.bodies == [{"event": "promotion.decision", "text": "v2: promoted",
                                "model": "m", "decision": {"challenger": "2"}}]


def test_a_receiver_that_refuses_or_is_gone_is_a_warning_not_a_failure(receiver, caplog):
    receiver.status = 500
    assert not notify.post(receiver.url, "retrain.failed", "x")
    receiver.shutdown()
    receiver.server_close()
    assert not notify.post(receiver.url, "retrain.failed", "x")
    assert caplog.text.count("could not post retrain.failed") == 2
    assert not notify.post("", "retrain.failed", "x")  # no URL: nothing to do


def test_the_environment_overrides_params_and_bad_urls_are_refused(monkeypatch):
    monkeypatch.setenv(notify.WEBHOOK_ENV, "https://hooks.example/abc")
    assert notify.webhook_url("http://internal/hook") == "https://hooks.example/abc"
    monkeypatch.delenv(notify.WEBHOOK_ENV)
    assert notify.webhook_url("") == ""
    with pytest.raises(ParamsError, match=r"notify\.webhook_url must be an http:// or "
                                          r"https:// URL with a host, got 'file:///etc/passwd'"):
        parse_params({**load_params(REPO).raw, "notify": {"webhook_url": "file:///etc/passwd"}})
