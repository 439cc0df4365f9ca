"""Team notifications: one JSON POST to a webhook per event (a failed retrain, every
promotion decision and rollback).

The body is ``{"event", "text", ...details}``; ``text`` is one human line, so Slack- and
Mattermost-style incoming webhooks show it as is. The URL comes from ``SENTI_WEBHOOK_URL``
(for URLs that are secrets, e.g. Slack's) or ``notify.webhook_url`` in params.yaml. A
notification never fails the run it reports on: an unreachable receiver, or one that
answers with a redirect (never followed), is a warning in the log. Errors and log lines name
the webhook by scheme and host only: its path may be its key.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from http.client import HTTPException
from typing import Any

from senti.config import check_url, url_origin

WEBHOOK_ENV = "SENTI_WEBHOOK_URL"
TIMEOUT_S = 10

log = logging.getLogger(__name__)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery: following it would turn the POST into a GET to
    wherever the receiver points."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"{msg}: redirects are not followed",
                                     headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirects)


def webhook_url(configured: str) -> str:
    """The webhook to post to: ``SENTI_WEBHOOK_URL`` if set, else ``configured`` ("" = none).
    A bad URL is a ValueError naming the setting, and the URL by scheme and host only."""
    from_env = os.environ.get(WEBHOOK_ENV)
    try:
        return check_url(from_env or configured)
    except ValueError as exc:
        raise ValueError(f"{WEBHOOK_ENV if from_env else 'notify.webhook_url'}: {exc}") from None


def _reason(exc: Exception) -> str:
    """Why a post failed, for the log. OSErrors (refused, timed out, an HTTP error status)
    never quote the URL; http.client's and the codecs' errors may quote its path: their
    class names them."""
    return str(exc) if isinstance(exc, OSError) else type(exc).__name__


def post(url: str, event: str, text: str, **details: Any) -> bool:
    """POST the event to ``url``; True if the receiver accepted it (2xx; a redirect is not
    followed). No-op without a URL; failures are logged (the URL by scheme and host only),
    never raised."""
    if not url:
        return False
    body = json.dumps({"event": event, "text": text, **details}, ensure_ascii=False,
                      default=str).encode("utf-8")
    request = urllib.request.Request(check_url(url), data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=TIMEOUT_S) as response:
            return 200 <= response.status < 300
    except (OSError, ValueError, HTTPException) as exc:  # URLError, HTTPError: OSErrors
        log.warning("webhook %s: could not post %s: %s", url_origin(url), event,
                    _reason(exc))
        return False
