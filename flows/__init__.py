"""Prefect flows composing the senti library, and the ``senti`` console script."""

import os

# The Prefect servers senti starts for itself (the temporary API of a flow run, the server of
# `senti schedule`) send telemetry every hour and log an ERROR where there is no internet.
# Opt out unless the user decided otherwise; set before any Prefect import reads its settings.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
