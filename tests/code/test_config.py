import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from senti.cli import app
from senti.config import (
    ParamsError,
    apply_overrides,
    load_params,
    parse_overrides,
    write_overrides,
)

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_load_with_required_keys():
    params = load_params(REPO)
    flat = params.flat()
    for key in ("data.source", "data.sample_size", "vocab.min_freq", "vocab.max_size",
                "model.embed_dim", "model.lstm_units", "model.dropout", "train.epochs",
                "train.batch_size"):
        assert key in flat


def test_overrides_are_typed_as_yaml():
    assert parse_overrides(["train.epochs=3", "data.labels=[a, b]", "train.class_weights=true"]) \
        == {"train.epochs": 3, "data.labels": ["a", "b"], "train.class_weights": True}


@pytest.mark.parametrize("bad, message", [
    (["train.epochs"], "section.key=value"),
    (["train.epoch=3"], "unknown parameter"),
    (["nosuch.key=1"], "no section"),
    (["train.epochs=three"], "train.epochs: expected an integer"),
    (["model.dropout=1.5"], "model.dropout"),
    (["train.lr_plateau_factor=0"], r"train.lr_plateau_factor must be in \(0, 1\]"),
    (["train.adversarial_eps=-1"], r"train.adversarial_eps must be >= 0"),
    (["embeddings.epochs=-1"], r"embeddings.epochs must be >= 0"),
    (["embeddings.row_norm=0"], r"embeddings.row_norm must be > 0, got 0"),
    (["embeddings.extra_corpus=wikipedia"], r"embeddings.extra_corpus must be one of"),
    (["embeddings.architecture=glove"], r"embeddings.architecture must be one of"),
    (["embeddings.downsample=1"], r"embeddings.downsample must be in \[0, 1\)"),
    (["vocab.max_size=2000001"], r"vocab.max_size must be in \[1, 2000000\]"),
    (["model.maxlen=10001"], r"model.maxlen must be in \[1, 10000\]"),
    (["train.class_weights=1"], r"train.class_weights: expected true/false, got 1"),
    (["data.val_fraction=0.5", "data.test_fraction=0.45"], r"must leave >= 10% for training"),
    (["paths.tokens=/tmp/x"], r"paths are part of the project layout"),
    (["paths={tokens: x}"], r"override paths: paths are part of the project layout"),
    (["data.source_dirs=[/]"], r"^override data.source_dirs: the folders data may be read from "
                               r"are part of the project, not a per-run parameter"),
    (["data={source: x.csv, source_dirs: [/]}"], r"^override data: the folders data may be"),
    (["dask.scheduler=tcp://203.0.113.9:8786"], r"^override dask.scheduler: the Dask "
                                                r"scheduler is where a run sends its data, not "
                                                r"a per-run parameter .*DASK_SCHEDULER_ADDRESS"),
    (["notify.webhook_url=http://169.254.169.254/"], r"^override notify.webhook_url: the "
                                                     r"webhook is where a run sends its data.*"
                                                     r"SENTI_WEBHOOK_URL"),
    (["notify={webhook_url: http://x.invalid/}"], r"^override notify: the webhook is where"),
    (["train.epochs=" + "[" * 5000], r"^override train.epochs: value '\[\[\[.*: nested too "
                                       r"deeply to be a parameter$"),
    (["train.epochs=[1"], r"^override train.epochs: value '\[1' is not valid YAML: line 1, "
                          r"column 3: expected ',' or '\]', but got '<stream end>' \(while "
                          r"parsing a flow sequence\)$"),
])
def test_bad_overrides_name_the_problem(bad, message):
    tree = load_params(REPO).raw
    with pytest.raises(ParamsError, match=message):
        apply_overrides(tree, parse_overrides(bad))


def test_no_override_moves_the_paths(tmp_path):
    tree = load_params(REPO).raw
    moved = {**tree["paths"], "tokens": "elsewhere/tokens.parquet"}  # a valid paths section
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    before = (tmp_path / "params.yaml").read_bytes()
    for overrides in ({"paths": moved}, {"paths.tokens": "elsewhere/tokens.parquet"}):
        with pytest.raises(ParamsError, match=r"paths are part of the project layout"):
            apply_overrides(tree, overrides)
        with pytest.raises(ParamsError, match=r"paths are part of the project layout"):
            write_overrides(tmp_path, overrides)  # what a retrain with overrides calls
    assert (tmp_path / "params.yaml").read_bytes() == before


@pytest.mark.parametrize("content, message", [
    (b"train:\n  epochs: 1\n epochs: 2\n", r"is not valid YAML: line 3, column 2: expected "
     r"<block end>, but found '<block mapping start>' \(while parsing a block mapping\)$"),
    (b"train:\n  epochs: 1\n  epochs: 2\n", r"is not valid YAML: line 3, column 3: found "
     r"duplicate key \"epochs\" with value \"2\" \(original value: \"1\"\) \(while "
     r"constructing a mapping\)$"),
    (b"train:\n  epochs: \xff\n", r"is not UTF-8: undecodable byte 0xff at byte offset 17$"),
])
def test_a_params_file_that_is_not_yaml_is_named_with_where(tmp_path, content, message):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError, match=f"^{re.escape(str(path))} {message}"):
        load_params(tmp_path)


@pytest.mark.parametrize("params, set_, last_line", [
    (b"train: [1\n", [], r"params.yaml is not valid YAML: line 2, column 1: expected ',' or "
     r"'\]', but got '<stream end>' \(while parsing a flow sequence\)"),
    (b"\xfe\xff", [], r"params.yaml is not UTF-8: undecodable byte 0xfe at byte offset 0"),
    (None, ["train.epochs=[1"], r"override train.epochs: value '\[1' is not valid YAML: "),
    (None, ["paths={}"], r"override paths: paths are part of the project layout"),
])
def test_the_cli_exits_2_naming_a_bad_params_file_or_override(tmp_path, params, set_,
                                                               last_line):
    (tmp_path / "params.yaml").write_bytes(params or (REPO / "params.yaml").read_bytes())
    args = [a for value in set_ for a in ("--set", value)]
    result = CliRunner().invoke(app, ["retrain", *args, "--root", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert re.search(last_line, result.output)


def test_unknown_and_missing_keys_are_rejected(tmp_path):
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    tree["train"]["epochz"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ParamsError, match="unknown parameter"):
        load_params(tmp_path)
    del tree["train"]["epochz"], tree["vocab"]["min_freq"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ParamsError, match=r"missing parameter vocab\.min_freq"):
        load_params(tmp_path)


def test_write_overrides_keeps_comments(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    write_overrides(tmp_path, {"train.epochs": 1})
    written = (tmp_path / "params.yaml").read_text()
    assert "# The single source of truth" in written
    assert load_params(tmp_path).train.epochs == 1


def test_float_overrides_survive_the_round_trip_through_params_yaml(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    write_overrides(tmp_path, {"train.learning_rate": 1e-5})  # written back as 1e-05
    assert load_params(tmp_path).train.learning_rate == 1e-5
    assert parse_overrides(["train.learning_rate=1e-5"]) == {"train.learning_rate": 1e-5}


def test_paths_must_stay_inside_the_project(tmp_path):
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    tree["paths"]["tokens"] = "../outside.parquet"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ParamsError, match=r"paths.tokens must be a relative path inside the "
                                          r"project, got '../outside"):
        load_params(tmp_path)


def test_layout_reads_the_paths_section(tmp_path):
    from senti.config import load_context

    params, layout = load_context(REPO)
    assert layout.tokens == REPO / params.paths.tokens
    assert layout.model_file.parent == REPO / params.paths.model_dir
    with pytest.raises(AttributeError):
        layout.no_such_path  # noqa: B018


def test_only_overrides_that_loosen_the_policy_count_as_loosened():
    from senti.config import apply_overrides, loosened, parse_params

    checked_in = load_params(REPO)

    def run_with(**overrides):
        return loosened(checked_in, parse_params(apply_overrides(checked_in.raw, overrides)))

    assert run_with(**{"train.epochs": 1, "data.sample_size": 100}) == {}  # not policy
    assert run_with(**{"promote.min_delta": 0.01, "validate.min_rows": 5000,
                       "promote.alpha": 0.1}) == {}  # stricter
    old = checked_in.promote.min_delta
    assert run_with(**{"promote.min_delta": -1}) == {"promote.min_delta": (old, -1)}
    assert set(run_with(**{"promote.require_beat_baseline": False,
                           "validate.max_class_share": 0.99, "validate.min_rows": 10})) == {
        "promote.require_beat_baseline", "validate.max_class_share", "validate.min_rows"}


def test_a_fixed_project_root_cannot_be_moved_by_a_run(tmp_path, monkeypatch):
    from senti.config import ROOT_ENV, project_root

    monkeypatch.delenv(ROOT_ENV, raising=False)
    assert project_root(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv(ROOT_ENV, str(REPO))
    assert project_root(None) == REPO.resolve()
    assert project_root(REPO) == REPO.resolve()
    with pytest.raises(ParamsError, match=r"this deployment runs the project at .* only"):
        project_root(tmp_path)
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    with pytest.raises(ParamsError, match=r"this deployment runs the project at .* only"):
        project_root(loop)  # a run's root parameter that is a symlink loop: refused, no crash
    monkeypatch.delenv(ROOT_ENV)
    with pytest.raises(ParamsError, match=r"cannot read it"):
        load_params(project_root(loop))
