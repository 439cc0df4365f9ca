"""Team notifications: one JSON POST to a webhook per event (a failed retrain, every
promotion decision and rollback).

The body is ``{"event", "text", ...details}``; ``text`` is one human line, so Slack- and
Mattermost-style incoming webhooks show it as is. The URL comes from ``SENTI_WEBHOOK_URL``
(for URLs that are secrets, e.g. Slack's) or ``notify.webhook_url`` in params.yaml. A
notification never fails the run it reports on: an unreachable receiver is a warning in the
log.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from senti.config import check_url

WEBHOOK_ENV = "SENTI_WEBHOOK_URL"
TIMEOUT_S = 10

log = logging.getLogger(__name__)


def webhook_url(configured: str) -> str:
    """The webhook to post to: ``SENTI_WEBHOOK_URL`` if set, else ``configured`` ("" = none).
    A malformed ``SENTI_WEBHOOK_URL`` raises ValueError naming it (``configured`` was checked
    when params.yaml was read)."""
    try:
        return check_url(os.environ.get(WEBHOOK_ENV) or configured)
    except ValueError as exc:
        raise ValueError(f"{WEBHOOK_ENV} {exc}") from None


def post(url: str, event: str, text: str, **details: Any) -> bool:
    """POST the event to ``url``; True if the receiver accepted it (2xx). No-op without a
    URL; failures are logged, never raised."""
    if not url:
        return False
    body = json.dumps({"event": event, "text": text, **details}, ensure_ascii=False,
                      default=str).encode("utf-8")
    request = urllib.request.Request(check_url(url), data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return 200 <= response.status < 300
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        log.warning("webhook %s: could not post %s: %s", urlsplit(url).hostname, event, exc)
        return False
