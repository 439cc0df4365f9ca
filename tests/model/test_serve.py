"""The inference path on a tiny (untrained) model: shapes, order, bad input, what the model
reads of a text, out-of-domain flags, and the request limits of a server."""

import asyncio
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModelContext, scoring_server
from mlflow.pyfunc.scoring_server import predictions_to_json

from senti.config import MAX_MAXLEN, ParamsError, apply_overrides, load_params, parse_overrides
from senti.inference import pad_batch
from senti.prepare import normalise_text
from senti.registry import INPUT_EXAMPLE, PYFUNC_MODEL
from senti.segment import MAX_USER_WORD_CHARS
from senti.serve import InvalidInputError, ModelThread, SentimentPyfunc, _texts_of
from senti.server import BodyLimit, FastInvocations, run_server
from senti.vocab import build_vocab, save_vocab
from tests.conftest import REPO, free_port
from tests.model.conftest import LABELS

PREDICTION_COLUMNS = ["label", "probability", "prob_negative", "prob_positive", "known_share",
                      "flag"]


def test_predictions_have_label_probabilities_and_coverage(predictor):
    out = predictor.predict(["质量很好", "太差了", "Nice 质量 😀", "質量很好", "🙂🙂"])
    assert list(out.columns) == PREDICTION_COLUMNS
    assert len(out) == 5 and set(out["label"].dropna()) <= set(LABELS)
    np.testing.assert_allclose(out["prob_negative"] + out["prob_positive"], 1, atol=1e-5)
    assert out["known_share"].between(0, 1).all()


def test_batch_order_matches_single_predictions(predictor):
    texts = ["质量很好，物流也快，非常满意", "差", "一般般吧"]
    batch, _ = predictor.score(texts)
    singles = np.concatenate([predictor.score([t])[0] for t in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_concurrent_requests_get_their_own_predictions(predictor):
    texts = ["质量很好，物流也快，非常满意", "差", "一般般吧", "太差了，再也不买了"] * 4
    alone = [predictor.predict([t]) for t in texts]
    with ThreadPoolExecutor(8) as clients:  # as the server's request threads call it
        together = list(clients.map(lambda t: predictor.predict([t]), texts))
    for one, other in zip(alone, together, strict=True):
        assert one[["label", "flag"]].equals(other[["label", "flag"]])
        np.testing.assert_allclose(one["prob_positive"], other["prob_positive"], atol=1e-5)


def test_the_model_thread_merges_what_queues_while_it_is_busy():
    running, busy, calls = threading.Event(), threading.Event(), []

    def infer(seqs: list[list[int]]) -> np.ndarray:  # row sums, each call's shape recorded
        ids = pad_batch(seqs)
        calls.append(ids.shape)
        running.set()
        busy.wait(10)
        return ids.sum(axis=1, keepdims=True)
    model = ModelThread(infer, max_rows=4)
    first = model.submit([[1, 2]])  # runs alone; the model is busy until `busy` is set
    assert running.wait(10)
    queued = [model.submit(seqs) for seqs in ([[3]], [[4, 4, 4], [5]], [[6], [7]])]
    busy.set()
    assert first.result(10).tolist() == [[3]]
    assert [f.result(10).tolist() for f in queued] == [[[3]], [[12], [5]], [[6], [7]]]
    assert calls == [(1, 2), (3, 3), (2, 1)]  # 1+2 rows merged, padded; 2 more: over max_rows


def test_a_failed_forward_pass_fails_only_its_callers():
    def infer(seqs: list[list[int]]) -> np.ndarray:
        ids = pad_batch(seqs)
        if (ids == 0).any():
            raise ValueError("padding seen")
        return ids
    model = ModelThread(infer, max_rows=1)
    with pytest.raises(ValueError, match="padding seen"):
        model.submit([[1, 2], [3]]).result(10)
    assert model.submit([[5]]).result(10).tolist() == [[5]]  # the thread carries on


def test_huge_text_is_clipped_not_rejected(predictor):
    out = predictor.predict(["质量很好" * 100_000])
    assert out["label"].iloc[0] in LABELS and out["flag"].iloc[0] == "ok"


def test_raw_text_is_clipped_before_it_is_normalised(predictor):
    # normalising first would collapse the spaces and read 差 too
    text = "好" + "\u3000" * predictor.max_chars + "差"
    assert "差" in normalise_text(text)
    assert predictor.encode(text) == predictor.encode("好")


def test_a_huge_text_costs_what_a_long_one_does(predictor):
    huge = "好，" * 20_000_000  # 40M characters: normalising them all takes seconds
    started = time.perf_counter()
    out = predictor.predict([huge])
    assert time.perf_counter() - started < 2.0
    assert out["flag"].iloc[0] == "ok"


@pytest.mark.parametrize("text, flag, known_share, judged", [
    ("质量很好", "ok", 1.0, True),
    ("质量很好😀😀", "low_coverage", 0.6, True),  # 质量 很 好 known, the emoji not
    ("齉龘", "no_known_tokens", 0.0, False),
    ("hello world", "no_chinese", 0.0, False),
    ("🙂🙂", "no_chinese", 0.0, False),
    ("a" * 128 + "好", "no_chinese", 0.0, False),  # 好 lies past what the model reads
])
def test_out_of_domain_texts_are_flagged_without_a_label(predictor, monkeypatch, text, flag,
                                                         known_share, judged):
    monkeypatch.setattr(predictor, "min_known_share", 0.7)
    row = predictor.predict([text]).iloc[0]
    assert row["flag"] == flag
    assert row["known_share"] == pytest.approx(known_share)
    assert (row["label"] in LABELS) is judged
    assert (row["probability"] is not None) is judged
    assert row["prob_negative"] + row["prob_positive"] == pytest.approx(1, abs=1e-5)


def test_a_flagged_row_is_null_in_the_servers_json(predictor):
    buffer = io.StringIO()
    predictions_to_json(predictor.predict(["hello", "质量很好"]), buffer)

    def no_nan(constant: str):
        raise AssertionError(f"{constant} is not JSON")
    rows = json.loads(buffer.getvalue(), parse_constant=no_nan)["predictions"]
    assert rows[0]["label"] is None and rows[0]["probability"] is None
    assert rows[0]["flag"] == "no_chinese" and rows[1]["flag"] == "ok"


@pytest.mark.parametrize("bad, problem", [
    ([""], "row 0: text is empty"),
    (["ok", "   \u3000"], "row 1: text is empty or whitespace only"),
    ([None], "row 0: text is null"),
    ([float("nan")], "row 0: text is null"),
    ([42], "row 0: text must be a string, got int"),
])
def test_bad_rows_are_named(predictor, bad, problem):
    with pytest.raises(InvalidInputError, match=problem):
        predictor.predict(bad)


def test_pyfunc_inputs_need_a_text_column():
    assert _texts_of(pd.DataFrame({"text": ["好", None]})) == ["好", None]
    assert _texts_of([{"text": "好"}, {"text": "差"}]) == ["好", "差"]
    with pytest.raises(InvalidInputError, match="'text' column"):
        _texts_of(pd.DataFrame({"review": ["好"]}))


def _load_context(folder, serving_config: object, **artifacts: str) -> SentimentPyfunc:
    """A :class:`SentimentPyfunc` loaded as MLflow loads it, from the tiny model's files and
    ``serving_config`` (written as JSON), ``artifacts`` replacing or adding to them."""
    (folder / "serving.json").write_text(json.dumps(serving_config))
    model = SentimentPyfunc()
    model.load_context(PythonModelContext({
        "model": str(folder / "model.keras"), "vocab": str(folder / "vocab.json"),
        "labels": str(folder / "labels.json"), "serving_config": str(folder / "serving.json"),
        **artifacts}, model_config=None))
    return model


@pytest.mark.parametrize("config", [{"maxlen": 0}, {"maxlen": -1}, {"maxlen": True},
                                    {"maxlen": 2.5}, {"maxlen": MAX_MAXLEN + 1}, {}, [16]])
def test_a_serving_config_without_a_sane_maxlen_is_refused(tiny_model_dir, config):
    with pytest.raises(ValueError, match=rf"serving config {tiny_model_dir / 'serving.json'}: "
                                         rf"maxlen must be an integer from 1 to {MAX_MAXLEN}"):
        _load_context(tiny_model_dir, config)


def test_a_serving_config_with_a_sane_maxlen_loads(tiny_model_dir):
    assert _load_context(tiny_model_dir, {"maxlen": 16}).predictor.maxlen == 16


def test_a_vocabulary_the_model_was_not_built_for_is_refused(tiny_model_dir, tmp_path):
    vocab = tmp_path / "vocab.json"
    save_vocab(build_vocab([["好", "差"]], 1, 40), vocab)
    with pytest.raises(ValueError, match=rf"vocabulary {vocab} has 4 tokens; the model's "
                                         rf"embedding has 8 rows"):
        _load_context(tiny_model_dir, {"maxlen": 16}, vocab=str(vocab))


def test_a_user_dictionary_over_the_bounds_is_refused_at_load(tiny_model_dir, tmp_path):
    user_dict = tmp_path / "userdict.txt"
    user_dict.write_text("好" * (MAX_USER_WORD_CHARS + 1) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{user_dict} line 1: a word of"):
        _load_context(tiny_model_dir, {"maxlen": 16}, user_dict=str(user_dict))


def test_a_request_over_the_row_limit_is_refused(predictor, monkeypatch):
    monkeypatch.setattr(predictor, "min_known_share", predictor.min_known_share)  # restored
    model = SentimentPyfunc()
    model.predictor = predictor
    model.configure(min_known_share=0.5, max_rows=2)
    assert predictor.min_known_share == 0.5
    assert len(model.predict(None, pd.DataFrame({"text": ["好", "差"]}))) == 2
    with pytest.raises(MlflowException, match=r"3 rows in one request; the limit is 2 "
                                              r"\(serve.max_rows_per_request\)") as refused:
        model.predict(None, pd.DataFrame({"text": ["好", "差", "太差了"]}))
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"  # the server answers 400


async def _echo(scope, receive, send) -> None:
    """An ASGI app that reads the whole body and answers with its size."""
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _post(chunks: list[bytes], declared: int | bytes | None) -> tuple[int, bytes, int]:
    """POST ``chunks`` through a 100-byte BodyLimit in front of :func:`_echo`: the status,
    the response body, and how many chunks were read."""
    pending = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
               for i, chunk in enumerate(chunks)]
    sent: list[dict] = []

    async def receive() -> dict:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
    headers = [] if declared is None else [(b"content-length", declared if isinstance(
        declared, bytes) else str(declared).encode())]
    asyncio.run(BodyLimit(_echo, max_bytes=100)(
        {"type": "http", "method": "POST", "path": "/invocations", "headers": headers},
        receive, send))
    return sent[0]["status"], sent[1]["body"], len(chunks) - len(pending)


def test_a_body_within_the_limit_reaches_the_app_whole():
    assert _post([b"x" * 60, b"x" * 40], declared=None) == (200, b"100", 2)


def test_a_declared_body_over_the_limit_is_refused_unread():
    status, body, read = _post([b"x" * 101], declared=101)
    assert (status, read) == (413, 0)
    assert json.loads(body)["message"] == ("request body is 101 bytes; the limit is 100 bytes "
                                           "(serve.max_body_bytes): send fewer rows per request")


def test_a_content_length_of_thousands_of_digits_is_refused_unread_not_a_500():
    status, body, read = _post([b"x" * 5], declared=b"0" * 4300 + b"5")  # int() refuses it
    assert (status, read) == (413, 0)
    assert json.loads(body)["message"].startswith(f"request body is {'0' * 40} bytes; the limit")


def test_a_body_sent_two_bytes_a_message_costs_about_its_own_size():
    messages, sent = 200_000, []

    async def receive() -> dict:  # a new bytes object each time, as a server's parser makes
        nonlocal messages
        messages -= 1
        return {"type": "http.request", "body": bytes((120, 121)), "more_body": messages > 0}

    async def send(message: dict) -> None:
        sent.append(message)
    tracemalloc.start()
    try:
        asyncio.run(BodyLimit(_echo, max_bytes=1_000_000)(
            {"type": "http", "method": "POST", "path": "/invocations", "headers": []},
            receive, send))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (sent[0]["status"], sent[1]["body"]) == (200, b"400000")
    assert peak < 5 * 400_000  # a bytes object and a list slot per message: ~24 times


def test_a_streamed_body_over_the_limit_is_refused_before_its_end():
    status, body, read = _post([b"x" * 60, b"x" * 60, b"x" * 60], declared=None)  # chunked
    assert (status, read) == (413, 2)
    assert "request body is larger; the limit is 100 bytes" in json.loads(body)["message"]


@pytest.mark.parametrize("override, message", [
    ("serve.max_rows_per_request=0", r"serve.max_rows_per_request must be >= 1, got 0"),
    ("serve.max_body_bytes=1e6", r"serve.max_body_bytes: expected an integer, got 1000000.0"),
    ("serve.max_connections=0", r"serve.max_connections must be in \[1, 100000\], got 0"),
    ("serve.min_known_share=1.5", r"serve.min_known_share must be in \[0, 1\] \(0 = never\)"),
    ("serve.batch_dirs=[/tmp]", r"serve.batch_dirs.0 must be a relative path inside the project"),
    ("serve.batch_dirs=[]", r"serve.batch_dirs must name at least one folder"),
])
def test_serve_params_are_checked(override, message):
    with pytest.raises(ParamsError, match=message):
        apply_overrides(load_params(REPO).raw, parse_overrides([override]))


@pytest.fixture(scope="module")
def pyfunc_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model saved as senti registers it (models from code, its signature)."""
    folder = tmp_path_factory.mktemp("pyfunc")
    (folder / "serving.json").write_text(json.dumps({"maxlen": 16}))
    example = pd.DataFrame({"text": INPUT_EXAMPLE})
    mlflow.pyfunc.save_model(
        folder / "model", python_model=str(PYFUNC_MODEL), input_example=example,
        artifacts={"model": str(tiny_model_dir / "model.keras"),
                   "vocab": str(tiny_model_dir / "vocab.json"),
                   "labels": str(tiny_model_dir / "labels.json"),
                   "serving_config": str(folder / "serving.json")},
        signature=infer_signature(example, pd.DataFrame(
            {"label": LABELS, "probability": [0.9, 0.8],
             **{f"prob_{label}": 0.5 for label in LABELS}})),
        pip_requirements=[])  # senti pins its own; MLflow would spend seconds inferring them
    return folder / "model"


@pytest.fixture(scope="module")
def apps(pyfunc_model):
    """MLflow's scoring app for :func:`pyfunc_model`, at most 3 rows a request; and that app
    behind :class:`FastInvocations`, with a list that records each request that reached
    MLflow's app."""
    model = mlflow.pyfunc.load_model(str(pyfunc_model))
    model.unwrap_python_model().configure(min_known_share=0.5, max_rows=3)
    mlflow_app = scoring_server.init(model)
    reached: list[bytes] = []

    async def counted(scope, receive, send):
        reached.append((await receive())["body"])
        return await mlflow_app(scope, lambda: _message(reached[-1]), send)
    return mlflow_app, FastInvocations(counted, model.unwrap_python_model()), reached


async def _message(body: bytes) -> dict:
    return {"type": "http.request", "body": body, "more_body": False}


def _invoke(app, body: bytes, content_type: bytes = b"application/json") -> tuple:
    """POST ``body`` to /invocations of an ASGI ``app``: (status, content type, body)."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)
    asyncio.run(app({"type": "http", "method": "POST", "path": "/invocations",
                     "headers": [(b"content-type", content_type)], "query_string": b"",
                     "scheme": "http", "server": ("test", 80), "root_path": "",
                     "http_version": "1.1"}, lambda: _message(body), send))
    headers = dict(sent[0]["headers"])
    return sent[0]["status"], headers[b"content-type"], b"".join(
        m.get("body", b"") for m in sent[1:])


FAST = [
    {"dataframe_records": [{"text": "质量很好"}, {"text": "hello"}, {"text": "太差了"}]},
    {"dataframe_split": {"columns": ["text"], "data": [["质量很好"], ["很 好"]]}},
    {"dataframe_records": [{"text": "一" * 500}]},
    {"inputs": ["好", "hello"]},
]
SLOW = [  # MLflow's app answers these (other shapes, bad rows, over the limit)
    {"dataframe_records": [{"text": None}]},
    {"dataframe_records": [{"text": 42}]},
    {"dataframe_records": [{"text": "  "}]},
    {"dataframe_records": [{"text": "好"}] * 4},
    {"dataframe_records": [{"review": "好"}]},
    {"dataframe_records": [{"text": "好", "extra": 1}]},
    {"dataframe_records": []},
    {"dataframe_split": {"columns": ["text"], "data": [["好"]], "index": [5]}},
    {"inputs": ["好", None]},
    {"inputs": [{"text": "好"}]},
    {"dataframe_records": [{"text": "好"}], "params": {"x": 1}},
]


@pytest.mark.parametrize("payload", FAST + SLOW, ids=lambda p: json.dumps(p)[:60])
def test_the_fast_path_answers_with_mlflows_bytes(apps, payload):
    mlflow_app, fast_app, reached = apps
    body = json.dumps(payload, ensure_ascii=False).encode()
    reached.clear()
    assert _invoke(fast_app, body) == _invoke(mlflow_app, body)
    assert reached == ([] if payload in FAST else [body])  # the fast path or MLflow's


@pytest.mark.parametrize("body, content_type", [
    (b"{", b"application/json"),
    ('{"dataframe_records": [{"text": "好"}]}'.encode(), b"application/json; charset=latin-1"),
    (b"text\n\xe5\xa5\xbd\n", b"text/csv"),
    ('{"dataframe_records": [{"text": "好"}]}'.encode(), b"application/json; charset=utf8"),
    ('{"dataframe_records": [{"text": "好"}]}'.encode(), b"application/json;"),
    ('{"dataframe_records": [{"text": "好"}]}'.encode(), b"Application/JSON"),
])
def test_other_bodies_reach_mlflows_app_unchanged(apps, body, content_type):
    mlflow_app, fast_app, reached = apps
    reached.clear()
    assert _invoke(fast_app, body, content_type) == _invoke(mlflow_app, body, content_type)
    assert reached == [body]


def test_a_body_nested_too_deeply_gets_a_400_not_a_500(apps):
    _, fast_app, reached = apps
    reached.clear()
    status, _, body = _invoke(fast_app, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and reached == []
    assert json.loads(body)["message"] == "the JSON body is nested too deeply to read"


def test_a_charset_in_upper_case_takes_the_fast_path(apps):
    mlflow_app, fast_app, reached = apps
    body, content_type = '{"inputs": ["好"]}'.encode(), b"application/json; charset=UTF-8"
    reached.clear()
    assert _invoke(fast_app, body, content_type) == _invoke(mlflow_app, body, content_type)
    assert reached == []


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_a_port_outside_1_to_65535_is_an_oserror_before_anything_starts(port):
    with pytest.raises(OSError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: a port is from "
                                      r"1 to 65535$"):
        run_server("models:/none/1", load_params(REPO).serve, "127.0.0.1", port, 1)


# run_server as `senti serve --workers 1` calls it, each worker taking requests on at most
# two open connections
_SERVER = """
import sys
from senti.config import load_params
from senti.server import run_server
limits = load_params(sys.argv[1]).serve.model_copy(update={"max_connections": 2})
run_server(sys.argv[2], limits, "127.0.0.1", int(sys.argv[3]), 1)
"""


def _status(port: int) -> int:
    """The status of a prediction requested on a new connection (0: none answered yet)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/invocations", body=b'{"inputs": ["\u597d"]}',
                           headers={"Content-Type": "application/json"})
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


@pytest.mark.slow
def test_a_server_worker_answers_503_beyond_its_open_connections(pyfunc_model, tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-c", _SERVER, str(REPO), str(pyfunc_model),
                                   str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while _status(port) != 200:
            assert server.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "the server did not answer in 180 s"
            time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port)):  # open, idle
            assert _status(port) == 200  # the second connection
            with socket.create_connection(("127.0.0.1", port)):
                assert _status(port) == 503  # a third
        assert _status(port) == 200  # the idle ones closed
    finally:
        server.kill()
        server.wait()
