"""prefect.yaml: the deployments parse, point at the real flows with valid parameters, and
the deployments `senti schedule` serves are built from exactly what it declares."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import flows.batch_predict
import flows.promote
import flows.retrain
from flows import schedule
from flows.cli import app
from senti.config import ParamsError
from tests.conftest import REPO

PREFECT_YAML = REPO / "prefect.yaml"


@pytest.fixture(scope="module")
def specs() -> dict[str, schedule.DeploymentSpec]:
    return {spec.name: spec for spec in schedule.load_deployments(PREFECT_YAML)}


def test_prefect_yaml_declares_the_three_deployments(specs):
    assert list(specs) == ["retrain-nightly", "promote", "batch-predict"]
    assert {s.name: s.entrypoint for s in specs.values()} == {
        "retrain-nightly": "flows/retrain.py:retrain",
        "promote": "flows/promote.py:promote",
        "batch-predict": "flows/batch_predict.py:batch_predict",
    }
    assert {s.work_pool for s in specs.values()} == {"senti"}
    assert not specs["promote"].schedules and not specs["batch-predict"].schedules


def test_work_pool_is_a_process_pool_for_prefect_deploy():
    tree = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    assert all(d["work_pool"]["name"] == "senti" for d in tree["deployments"])
    assert "pull" not in tree  # prefect deploy records the checkout as the working directory


def test_retrain_runs_nightly_in_shanghai_time(specs):
    (cron,) = specs["retrain-nightly"].schedules
    assert cron.timezone == "Asia/Shanghai" and cron.active
    runs = schedule.next_runs(cron, n=3, after=datetime(2025, 1, 1, tzinfo=UTC))
    assert [b - a for a, b in itertools.pairwise(runs)] == [timedelta(days=1)] * 2
    assert all(str(r.tzinfo) == "Asia/Shanghai" and r.hour < 7 for r in runs)  # at night


def test_next_runs_are_the_servers_cron_times():
    runs = schedule.next_runs(schedule.CronSpec("0 3 * * *", "Asia/Shanghai"), n=2,
                              after=datetime(2025, 1, 1, tzinfo=UTC))  # 08:00 in Shanghai
    assert [r.astimezone(UTC) for r in runs] == [datetime(2025, 1, 1, 19, tzinfo=UTC),
                                                 datetime(2025, 1, 2, 19, tzinfo=UTC)]


def test_entrypoints_resolve_to_the_flows_in_flows(specs):
    resolved = {name: schedule.resolve_flow(spec, REPO) for name, spec in specs.items()}
    assert resolved == {"retrain-nightly": flows.retrain.retrain,
                        "promote": flows.promote.promote,
                        "batch-predict": flows.batch_predict.batch_predict}


def test_default_parameters_are_valid(specs):
    per_run = {}
    for name, spec in specs.items():
        per_run[name] = schedule.check_parameters(spec, schedule.resolve_flow(spec, REPO))
        schedule.check_overrides(spec, REPO)
    assert per_run == {"retrain-nightly": [], "promote": [],
                       "batch-predict": ["input_csv", "output_csv"]}


def test_served_deployments_are_built_from_prefect_yaml(specs, tmp_path):
    built = {d.name: d for d in schedule.build_deployments(list(specs.values()), REPO, REPO)}
    assert list(built) == list(specs)
    for name, spec in specs.items():
        deployment = built[name]
        assert [(s.schedule.cron, s.schedule.timezone, s.active)
                for s in deployment.schedules] == [(c.cron, c.timezone, c.active)
                                                   for c in spec.schedules]
        # the same defaults; only "." becomes the project root the runner serves
        assert deployment.parameters == {**spec.parameters, "root": str(REPO)}
        assert deployment.tags == list(spec.tags)
        assert deployment.entrypoint == spec.module + "." + spec.function
        assert deployment.paused is False
    assert built["retrain-nightly"].concurrency_limit == 1


def _tree(**deployment) -> dict:
    base = {"name": "d", "entrypoint": "flows/retrain.py:retrain",
            "schedules": [{"cron": "0 3 * * *", "timezone": "Asia/Shanghai"}]}
    return {"deployments": [{**base, **deployment}]}


@pytest.mark.parametrize(("deployment", "message"), [
    ({"schedules": [{"interval": 3600, "timezone": "UTC"}]}, "unsupported key(s) interval"),
    ({"schedules": [{"cron": "0 3 * * *"}]}, "needs `cron` and `timezone`"),
    ({"schedules": [{"cron": "61 3 * * *", "timezone": "UTC"}]}, "schedules[0]"),
    ({"schedules": [{"cron": "0 3 * * *", "timezone": "Mars/Olympus"}]}, "schedules[0]"),
    ({"schedules": [{"cron": "0 3 * * *", "timezone": "UTC", "active": "yes"}]}, "active"),
    ({"pull": []}, "unsupported key(s) pull"),
    ({"entrypoint": "flows.retrain.retrain"}, "entrypoint must be"),
    ({"parameters": ["root"]}, "parameters: expected a mapping"),
    ({"concurrency_limit": 0}, "concurrency_limit"),
])
def test_what_senti_cannot_serve_identically_is_rejected(deployment, message):
    with pytest.raises(schedule.DeploymentConfigError) as error:
        schedule.parse_deployments(_tree(**deployment))
    assert message in str(error.value)


def test_duplicate_names_are_rejected():
    tree = _tree()
    tree["deployments"].append(dict(tree["deployments"][0]))
    with pytest.raises(schedule.DeploymentConfigError, match="duplicate deployment name"):
        schedule.parse_deployments(tree)


def test_bad_default_parameters_are_rejected():
    (spec,) = schedule.parse_deployments(_tree(parameters={"epochs": 3}))
    with pytest.raises(schedule.DeploymentConfigError, match=r"no parameter.*epochs"):
        schedule.check_parameters(spec, flows.retrain.retrain)
    (spec,) = schedule.parse_deployments(_tree(parameters={"overrides": "train.epochs=3"}))
    with pytest.raises(schedule.DeploymentConfigError, match="overrides"):
        schedule.check_parameters(spec, flows.retrain.retrain)


def test_default_overrides_are_checked_like_set(tmp_path):
    (spec,) = schedule.parse_deployments(_tree(parameters={"overrides": {"train.epoch": 3}}))
    with pytest.raises(ParamsError, match=r"override train\.epoch: unknown parameter"):
        schedule.check_overrides(spec, REPO)
    (spec,) = schedule.parse_deployments(_tree(parameters={"overrides": {"train.epochs": "3"}}))
    with pytest.raises(ParamsError, match=r"train\.epochs: expected an integer"):
        schedule.check_overrides(spec, REPO)


def test_entrypoint_that_is_not_the_imported_module_is_rejected(tmp_path: Path):
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "retrain.py").write_text("# a different copy\n")
    (spec,) = schedule.parse_deployments(_tree())
    with pytest.raises(schedule.DeploymentConfigError, match=r"not .*flows/retrain\.py"):
        schedule.resolve_flow(spec, tmp_path)


def test_schedule_check_prints_next_runs():
    result = CliRunner().invoke(app, ["schedule", "--check", "--root", str(REPO)])
    assert result.exit_code == 0, result.output
    assert "retrain/retrain-nightly" in result.output
    assert "(Asia/Shanghai); next runs:" in result.output
    assert "batch-predict/batch-predict" in result.output and "per run: input_csv" in result.output


def test_schedule_rejects_a_bad_prefect_yaml(tmp_path):
    bad = tmp_path / "prefect.yaml"
    bad.write_text(yaml.safe_dump(_tree(schedules=[{"rrule": "FREQ=DAILY"}])))
    result = CliRunner().invoke(app, ["schedule", "--root", str(REPO), "--prefect-yaml",
                                      str(bad)])
    assert result.exit_code == 2
    assert "unsupported key(s) rrule" in result.output
