"""``senti serve``: MLflow's own scoring app (what ``mlflow models serve`` runs:
``/invocations``, ``/ping``, ``/health``, ``/version``) under uvicorn, with the limits of
params.yaml's ``serve`` section. MLflow's server has no request-size limit of its own (it reads
any body whole), hence :class:`BodyLimit`. The common JSON requests skip MLflow's pandas
round trip (:class:`FastInvocations`, same answers, ~2x the requests/s). Not part of the
registered model's code (:mod:`senti.serve` is).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable

import mlflow.pyfunc
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from senti.config import ServeParams
from senti.serve import TEXT_COLUMN, InvalidInputError, SentimentPyfunc, check_texts

SERVE_ENV = "SENTI_SERVE"  # run_server -> its worker processes: the model URI and the limits
# uvicorn kills a worker that misses a health check for this long (its default, 5 s, kills
# workers that are busy tracing their first batch on a loaded machine, mid-request)
WORKER_HEALTHCHECK_S = 60
# TensorFlow's thread pools in each worker: the cores / workers (at least 1), so that workers
# do not each spread their forward passes over every core (on 2 cores with 2 workers that
# was ~30% more CPU per forward pass and ~8% fewer requests/s: docs/benchmarks.md)
TF_THREAD_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
MAX_PORT = 65535  # 0 (any free port) is refused: the port must be the one announced


# A Content-Length of more digits than this is refused unread (Python's int() refuses more
# than 4,300 digits, which would be a 500 and a traceback per request).
MAX_LENGTH_DIGITS = 18


class BodyLimit:
    """ASGI middleware: a request whose body is over ``max_bytes`` is answered 413 before the
    app sees it; the body is not read past the limit (Content-Length, or counted as it
    streams). The app gets the body it would have read whole anyway."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (len(declared) > MAX_LENGTH_DIGITS
                                     or int(declared) > self.max_bytes):
            return await self._refuse(send, f"request body is {declared[:40].decode()} bytes")
        body, more = bytearray(), True  # one buffer: a body sent a few bytes a message is
        while more:                       # not a Python object per message
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._refuse(send, "request body is larger")
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def receive_body() -> dict:
            return replay.pop() if replay else await receive()
        return await self.app(scope, receive_body, send)

    async def _refuse(self, send, what: str) -> None:
        body = json.dumps({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": (
            f"{what}; the limit is {self.max_bytes} bytes (serve.max_body_bytes): send fewer "
            "rows per request")}).encode()
        await _answer(send, 413, body)


def _fast_texts(body: bytes) -> list[str] | None:
    """The texts of a JSON body in the shapes clients send (``{"inputs": [...]}``,
    ``{"dataframe_records": [{"text": ...}, ...]}`` and ``{"dataframe_split": {"columns":
    ["text"], "data": [[...], ...]}}``) when every one is a text the model can read; None for
    anything else (other shapes, ``params``, a bad row, malformed JSON), which MLflow's app
    then answers. A body nested too deeply for Python's parser raises InvalidInputError."""
    try:
        payload = json.loads(body)
    except ValueError:  # not UTF-8 or not JSON: MLflow's app answers with its 400
        return None
    except RecursionError as exc:  # MLflow's app would fail on it with a 500
        raise InvalidInputError("the JSON body is nested too deeply to read") from exc
    if not isinstance(payload, dict) or len(payload) != 1:
        return None
    records, split, inputs = (payload.get(key) for key in (
        "dataframe_records", "dataframe_split", "inputs"))
    if isinstance(inputs, list):
        texts = inputs
    elif isinstance(records, list) and all(
            isinstance(row, dict) and row.keys() == {TEXT_COLUMN} for row in records):
        texts = [row[TEXT_COLUMN] for row in records]
    elif (isinstance(split, dict) and split.keys() == {"columns", "data"}
          and split["columns"] == [TEXT_COLUMN] and isinstance(split["data"], list)
          and all(isinstance(row, list) and len(row) == 1 for row in split["data"])):
        texts = [row[0] for row in split["data"]]
    else:
        return None
    try:
        return check_texts(texts) if texts else None
    except InvalidInputError:
        return None


class FastInvocations:
    """ASGI middleware in front of MLflow's scoring app: a ``POST /invocations`` whose JSON
    body :func:`_fast_texts` reads (at most the rows a request may carry) is answered by the
    model's :class:`~senti.serve.Predictor` directly, with the bytes MLflow's app would
    send; every other request goes to that app unchanged.

    MLflow's path builds a pandas DataFrame from the body, enforces the schema on it, and
    turns the answer's DataFrame back into JSON: for one text 16.9 ms in process, of which
    the model's answer 3.1 ms, and on 2 cores it capped a server at ~80 requests/s
    (docs/benchmarks.md). Refusals (bad rows, too many rows, other formats) keep MLflow's
    answers and error bodies because they take its path.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], model: SentimentPyfunc) -> None:
        self.app, self.model = app, model

    async def __call__(self, scope, receive, send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] == "/invocations" and _is_json(scope)):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:  # BodyLimit in front has bounded it
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            texts = _fast_texts(body)
        except InvalidInputError as exc:
            return await _answer(send, 400, MlflowException(
                str(exc), error_code=INVALID_PARAMETER_VALUE).serialize_as_json().encode())
        if texts is None or (self.model.max_rows is not None
                             and len(texts) > self.model.max_rows):
            replay = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive_body() -> dict:
                return replay.pop() if replay else await receive()
            return await self.app(scope, receive_body, send)
        try:  # MLflow's limit on a request's time, and its answer when it is over
            records = await asyncio.wait_for(
                asyncio.to_thread(self.model.predictor.records, texts),
                MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
        except TimeoutError:
            return await _answer(send, 504, b"Request processing time exceeded limit")
        # the bytes of MLflow's answer: json.dump with its defaults
        await _answer(send, 200, json.dumps({"predictions": records}).encode())


async def _answer(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _is_json(scope: dict) -> bool:
    """Whether the request's content type is one MLflow's app reads as UTF-8 JSON (it answers
    any other charset or parameter with 415; those requests take its path)."""
    content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    return mime == "application/json" and all(
        key == "charset" and value.lower() == "utf-8"
        for key, _, value in (p.partition("=") for p in parameters))


def scoring_app() -> BodyLimit:
    """The ASGI app of one server process (uvicorn calls this in each worker): the model and
    the limits :func:`run_server` put in ``SENTI_SERVE``, behind :class:`BodyLimit`."""
    from mlflow.pyfunc import scoring_server

    spec = json.loads(os.environ[SERVE_ENV])
    limits = ServeParams.model_validate(spec["serve"])
    model = mlflow.pyfunc.load_model(spec["model_uri"])
    python_model = model.unwrap_python_model()
    python_model.configure(limits.min_known_share, limits.max_rows_per_request, xla=True)
    return BodyLimit(FastInvocations(scoring_server.init(model), python_model),
                     limits.max_body_bytes)


def run_server(model_uri: str, limits: ServeParams, host: str, port: int, workers: int) -> None:
    """Serve ``model_uri`` over HTTP with ``limits`` until SIGTERM or SIGINT.

    Each worker's TensorFlow gets an equal share of this process's cores (:data:`TF_THREAD_ENV`).
    With one worker the server runs in this process; with more, uvicorn's supervisor (this
    process) runs them as its children and, on SIGTERM or SIGINT, stops them before it exits.
    Either way nothing is left serving once this process has gone. A port that cannot be
    bound raises OSError before the model is loaded.
    """
    import uvicorn

    if not 1 <= port <= MAX_PORT:
        raise OSError(f"cannot listen on {host}:{port}: a port is from 1 to {MAX_PORT}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    os.environ[SERVE_ENV] = json.dumps({"model_uri": model_uri, "serve": limits.model_dump()})
    for variable in TF_THREAD_ENV:  # the user's own setting wins
        os.environ.setdefault(variable, str(max(1, len(os.sched_getaffinity(0)) // workers)))
    app = scoring_app() if workers == 1 else "senti.server:scoring_app"
    uvicorn.run(app, factory=workers > 1, host=host, port=port, workers=workers,
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
                # uvicorn answers 503 once the open connections, the new one included,
                # reach its limit
                limit_concurrency=limits.max_connections + 1,
                log_config=None)  # uvicorn's lines go where senti's logging sends them
