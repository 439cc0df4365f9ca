"""Batch prediction on the tiny model: files confined to the project's batch folders, the
input never overwritten, the output written whole or not at all."""

import os
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from flows.batch_predict import batch_predict
from senti.batch import BatchInputError, predict_csv, project_file
from senti.config import Layout, load_params
from tests.conftest import REPO

FOLDERS = ["data"]


@pytest.fixture
def layout(tmp_path) -> Layout:
    """An (empty) project layout with its data folder and one pipeline artifact."""
    layout = Layout(tmp_path / "project", load_params(REPO).paths)
    layout.vocab.parent.mkdir(parents=True)
    layout.vocab.write_text("{}")
    return layout


@pytest.fixture
def predict(tiny_model, tmp_path_factory):
    """Batch prediction with the tiny model, its finished chunks kept in a folder of their
    own (tests/model/test_batch_dask.py checks them)."""
    work = tmp_path_factory.mktemp("work")
    return lambda source, output, **kw: predict_csv(tiny_model, source, output, work, **kw)


def _csv(path: Path, texts: list[str]) -> Path:
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(path, index=False)
    return path


def test_a_project_file_is_resolved_from_the_root(layout):
    source = _csv(layout.root / "data" / "in.csv", ["好"])
    assert project_file("data/in.csv", layout, FOLDERS) == source
    assert project_file(source, layout, FOLDERS) == source
    assert project_file("data/new/out.csv", layout, FOLDERS, output=True) == \
        layout.root / "data" / "new" / "out.csv"


@pytest.mark.parametrize("path", ["s3://bucket/in.csv", "http://example.com/in.csv",
                                  "file:///etc/passwd", "HTTPS://example.com/in.csv",
                                  Path("s3://bucket/in.csv")])  # a Path keeps one slash
def test_urls_are_refused(layout, path):
    for output in (False, True):
        with pytest.raises(BatchInputError, match=r": a URL; batch prediction reads and writes "
                                                  r"files under data/ of the project only"):
            project_file(path, layout, FOLDERS, output=output)


def test_paths_outside_the_batch_folders_are_refused(layout, tmp_path):
    outside = _csv(tmp_path / "outside.csv", ["好"])
    (layout.root / "data" / "link.csv").symlink_to(outside)
    for path in (outside, "data/../outside.csv", "data/link.csv", "params.yaml"):
        with pytest.raises(BatchInputError, match=r"is outside the project's batch folders "
                                                  r"\(data/ in "):
            project_file(path, layout, FOLDERS)
    with pytest.raises(BatchInputError, match="is outside"):
        project_file(outside, layout, FOLDERS, output=True)


def test_a_symlink_loop_is_refused_by_name(layout):
    loop = layout.root / "data" / "loop.csv"
    loop.symlink_to(loop.name)
    for output in (False, True):
        with pytest.raises(BatchInputError, match=r" data/loop.csv: a symlink loop$"):
            project_file("data/loop.csv", layout, FOLDERS, output=output)


def test_the_flow_refuses_urls_and_outside_paths_before_loading_anything(layout, tmp_path):
    shutil.copy2(REPO / "params.yaml", layout.root / "params.yaml")
    _csv(layout.root / "data" / "in.csv", ["好"])
    for source, target, problem in [("http://example.com/in.csv", "data/out.csv", "a URL"),
                                    ("data/in.csv", "/tmp/out.csv", "is outside"),
                                    ("data/in.csv", "data/../../out.csv", "is outside")]:
        with pytest.raises(BatchInputError, match=problem):
            batch_predict.fn(source, target, root=str(layout.root))
    assert sorted(p.name for p in layout.root.rglob("*")) == [  # no MLflow store was made
        "data", "in.csv", "params.yaml", "processed", "vocab.json"]


def test_an_output_may_not_overwrite_an_artifact_or_be_a_directory(layout):
    with pytest.raises(BatchInputError, match=r"would overwrite a pipeline artifact "
                                              r"\(paths.vocab\)"):
        project_file(layout.vocab, layout, FOLDERS, output=True)
    with pytest.raises(BatchInputError, match="output data is a directory"):
        project_file("data", layout, FOLDERS, output=True)
    with pytest.raises(BatchInputError, match=r"input data/missing\.csv: no such file"):
        project_file("data/missing.csv", layout, FOLDERS)


def test_predictions_keep_every_row_and_column(predict, tmp_path):
    source = _csv(tmp_path / "in.csv", ["质量很好", "hello", "太差了"])
    report = predict(source, tmp_path / "new" / "out.csv", chunk_rows=2)
    out = pd.read_csv(tmp_path / "new" / "out.csv", dtype={"model_version": str})
    assert report["rows"] == 3 and out["id"].tolist() == [0, 1, 2]
    assert list(out.columns) == ["id", "text", "label", "probability", "prob_negative",
                                 "prob_positive", "known_share", "flag", "model_version"]
    assert out["flag"].tolist() == ["ok", "no_chinese", "ok"]
    assert out["label"].isna().tolist() == [False, True, False]
    assert (out["model_version"] == "7").all()


def test_na_words_are_kept_as_they_are(predict, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,region,text\n1,NA,很好\n2,null,NA\n3,,None\n", encoding="utf-8")
    predict(source, tmp_path / "out.csv")
    lines = (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["1", "NA", "很好"], ["2", "null", "NA"], ["3", "", "None"]]
    out = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert out["flag"].tolist()[1:] == ["no_chinese", "no_chinese"]


def test_a_previous_output_is_refused_before_any_chunk_is_predicted(predict, tmp_path):
    source = _csv(tmp_path / "in.csv", ["质量很好", "太差了"])
    predict(source, tmp_path / "out.csv")
    seen = []
    with pytest.raises(BatchInputError, match=r"out\.csv: already has the prediction columns "
                                              r"\['label', 'probability', 'prob_negative', "
                                              r"'prob_positive', 'known_share', 'flag', "
                                              r"'model_version'\] \(is it an earlier output\?\): "
                                              r"rename them to classify it"):
        predict(tmp_path / "out.csv", tmp_path / "again.csv",
                progress=lambda done, total: seen.append(done))
    assert seen == [] and not (tmp_path / "again.csv").exists()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("same", ["path", "symlink", "hard link"])
def test_the_input_is_never_the_output(predict, tmp_path, same):
    source = _csv(tmp_path / "in.csv", ["质量很好"])
    output = {"path": source, "symlink": tmp_path / "link.csv",
              "hard link": tmp_path / "hard.csv"}[same]
    if same == "symlink":
        output.symlink_to(source)
    elif same == "hard link":
        os.link(source, output)
    before = _files(tmp_path)
    with pytest.raises(BatchInputError, match=r"input and output are the same file"):
        predict(source, output)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("rows, problem", [
    (["质量很好", "好", "   ", "差"], r"rows 2..3 \(row numbers below count from 2\): invalid "
                                      r"input: row 0: text is empty"),
    (["质量很好", ""], r"rows 0..1 \(row numbers below count from 0\): invalid input: "
                        r"row 1: text is null"),  # an empty cell
    ([], "no rows to classify"),
])
def test_a_refused_input_leaves_every_file_as_it_was(predict, tmp_path, rows, problem):
    source = _csv(tmp_path / "in.csv", rows)
    (tmp_path / "out.csv").write_text("the previous predictions\n")
    before = _files(tmp_path)
    for output in (tmp_path / "out.csv", tmp_path / "new" / "out.csv"):
        with pytest.raises(BatchInputError, match=problem):
            predict(source, output, chunk_rows=2)
    assert _files(tmp_path) == before  # no temporary file left, no folder made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]


def test_every_chunk_and_the_output_are_on_the_disk_before_they_count(predict, tmp_path,
                                                                     monkeypatch):
    """A power loss must not leave a chunk that counts as done, or the output, empty: each
    is flushed before its rename and its folder after it."""
    flushed: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)
    monkeypatch.setattr(os, "fsync", recording)
    source = _csv(tmp_path / "in.csv", ["好", "差", "还行"])
    output = tmp_path / "out" / "predictions.csv"
    report = predict(source, output, chunk_rows=2)
    written = Counter(Path(name).name.split(".tmp.")[0].rsplit(".", 1)[1]
                      for name in flushed if ".tmp." in name)  # files, before their rename
    assert report["chunks"] == 2
    assert written == {"head": 2, "csv": 2 + 1, "finished": 1}  # two chunks, the output
    assert any(Path(name).name.startswith(".predictions.csv.tmp.") for name in flushed)
    assert str(output.parent) in flushed  # and its new name
    assert len(pd.read_csv(output)) == 3


@pytest.mark.parametrize("output, message", [
    ("data/in.csv/out.csv", r"data/in.csv/out.csv: .*/data/in.csv is a file, not a folder$"),
    ("data/raw/.gitignore", r"data/raw/.gitignore: a hidden file"),
    ("data/" + "x" * 230 + ".csv", r": a file name of 234 bytes; the limit is 233$"),
])
def test_an_output_that_could_not_be_written_is_refused_before_anything_runs(layout, output,
                                                                              message):
    _csv(layout.root / "data" / "in.csv", ["好"])
    with pytest.raises(BatchInputError, match=message):
        project_file(output, layout, FOLDERS, output=True)
    assert project_file("data/" + "x" * 229 + ".csv", layout, FOLDERS, output=True)


def test_an_output_folder_swapped_for_a_symlink_during_the_job_is_refused(predict, tmp_path):
    models, exports = tmp_path / "models", tmp_path / "exports"
    models.mkdir()
    exports.mkdir()
    (models / "model.keras").write_bytes(b"the weights")
    source = _csv(tmp_path / "in.csv", ["好", "差", "还行"])

    def swap(done: int, total: int) -> None:  # after the last chunk, before the output
        if done == total:
            exports.rmdir()
            exports.symlink_to(models)
    with pytest.raises(BatchInputError, match=rf"^output {exports}/model.keras now leads to "
                                              rf"{models}/model.keras: a folder on its path "
                                              r"changed while the job ran; nothing was written"):
        predict(source, exports / "model.keras", chunk_rows=2, progress=swap)
    assert [p.name for p in models.iterdir()] == ["model.keras"]  # no temporary left either
    assert (models / "model.keras").read_bytes() == b"the weights"
