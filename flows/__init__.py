"""Prefect flows composing the senti library, and the ``senti`` console script."""

import os

# Prefect settings for the servers senti starts for itself (the temporary API of a flow run,
# the server of `senti schedule`), unless the user set them; set before any Prefect import
# reads its settings:
# - telemetry: they send it every hour and log an ERROR where there is no internet;
# - the temporary API's start-up bound: Prefect's 20 s is too short on a busy 2-core machine
#   (the run fails with "Timed out while attempting to connect to ephemeral Prefect API").
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
