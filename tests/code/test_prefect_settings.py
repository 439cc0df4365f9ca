"""Prefect servers started by senti do not phone home unless the user asks them to, and its
temporary API gets time to start on a busy machine."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = ("import flows; from prefect.settings import get_current_settings; "
         "print(get_current_settings().server.analytics_enabled)")


@pytest.mark.parametrize("user_value, enabled", [(None, "False"), ("true", "True")])
def test_server_telemetry_is_off_by_default_and_the_user_can_turn_it_on(user_value, enabled):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    if user_value is not None:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = user_value
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env,
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip().splitlines()[-1] == enabled


def test_the_temporary_api_gets_three_minutes_to_start_unless_the_user_says_otherwise():
    probe = ("import flows; from prefect.settings import get_current_settings; "
             "print(get_current_settings().server.ephemeral.startup_timeout_seconds)")
    for user_value, seconds in ((None, "180"), ("45", "45")):
        env = {k: v for k, v in os.environ.items()
               if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
        if user_value is not None:
            env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = user_value
        done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env,
                              capture_output=True, text=True, check=True)
        assert done.stdout.strip().splitlines()[-1] == seconds
