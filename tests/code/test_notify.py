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
    with pytest.raises(ParamsError, match=r"^notify\.webhook_url: needs an http:// or "
                                          r"https:// URL with a host, got 'file://'$"):
        parse_params({**load_params(REPO).raw, "notify": {"webhook_url": "file:///etc/passwd"}})


SECRET = "T000/B000/XXXXSECRET"  # a Slack webhook's path is its key


@pytest.mark.parametrize("url, named", [
    (f"hooks.slack.com/services/{SECRET}", "a URL with no scheme"),
    (f"ftp://bot:pw@hooks.example/{SECRET}?token=XXXXSECRET", "'ftp://hooks.example'"),
    (f"https:hooks.slack.com/{SECRET}", "'https://'"),
])
def test_a_refused_webhook_url_is_named_without_its_secret(monkeypatch, url, named):
    with pytest.raises(ParamsError) as refused:
        parse_params({**load_params(REPO).raw, "notify": {"webhook_url": url}})
    monkeypatch.setenv(notify.WEBHOOK_ENV, url)
    with pytest.raises(ValueError) as from_env:
        notify.webhook_url("")
    assert str(from_env.value) == (f"{notify.WEBHOOK_ENV}: needs an http:// or https:// URL "
                                   f"with a host, got {named}")
    for error in (refused.value, from_env.value):
        assert "SECRET" not in str(error) and "pw" not in str(error)


def test_a_webhook_that_fails_is_logged_without_its_secret(receiver, caplog):
    port = receiver.server_address[1]
    assert not notify.post(f"http://bot:pw@127.0.0.1:{port}/a b/{SECRET}", "retrain.failed",
                           "x")  # http.client refuses the space, quoting the path
    receiver.status = 500
    assert not notify.post(f"http://127.0.0.1:{port}/{SECRET}", "retrain.failed", "x")
    assert caplog.text.count("webhook 'http://127.0.0.1': could not post retrain.failed") == 2
    assert "SECRET" not in caplog.text and "pw" not in caplog.text


def test_a_redirect_is_a_failed_delivery_not_followed(receiver, caplog):
    receiver.status, receiver.location = 302, f"{receiver.url}/elsewhere"
    assert not notify.post(receiver.url, "retrain.failed", "x")
    assert len(receiver.bodies) == 1 and receiver.gets == []  # POSTed once, never fetched
    assert "could not post retrain.failed: HTTP Error 302: Found: redirects are not " \
        "followed" in caplog.text
