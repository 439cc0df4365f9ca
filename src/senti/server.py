"""``senti serve``: MLflow's own scoring app (what ``mlflow models serve`` runs:
``/invocations``, ``/ping``, ``/health``, ``/version``) under uvicorn, with the limits of
params.yaml's ``serve`` section. MLflow's server has no request-size limit of its own (it reads
any body whole), hence :class:`BodyLimit`. Not part of the registered model's code
(:mod:`senti.serve` is).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable

import mlflow.pyfunc

from senti.config import ServeParams

SERVE_ENV = "SENTI_SERVE"  # run_server -> its worker processes: the model URI and the limits
# uvicorn kills a worker that misses a health check for this long (its default, 5 s, kills
# workers that are busy tracing their first batch on a loaded machine, mid-request)
WORKER_HEALTHCHECK_S = 60


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
        if declared is not None and int(declared) > self.max_bytes:
            return await self._refuse(send, f"request body is {int(declared)} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send, "request body is larger")
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def receive_body() -> dict:
            return replay.pop() if replay else await receive()
        return await self.app(scope, receive_body, send)

    async def _refuse(self, send, what: str) -> None:
        body = json.dumps({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": (
            f"{what}; the limit is {self.max_bytes} bytes (serve.max_body_bytes): send fewer "
            "rows per request")}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def scoring_app() -> BodyLimit:
    """The ASGI app of one server process (uvicorn calls this in each worker): the model and
    the limits :func:`run_server` put in ``SENTI_SERVE``, behind :class:`BodyLimit`."""
    from mlflow.pyfunc import scoring_server

    spec = json.loads(os.environ[SERVE_ENV])
    limits = ServeParams.model_validate(spec["serve"])
    model = mlflow.pyfunc.load_model(spec["model_uri"])
    model.unwrap_python_model().configure(limits.min_known_share, limits.max_rows_per_request)
    return BodyLimit(scoring_server.init(model), limits.max_body_bytes)


def run_server(model_uri: str, limits: ServeParams, host: str, port: int, workers: int) -> None:
    """Serve ``model_uri`` over HTTP with ``limits`` until SIGTERM or SIGINT.

    With one worker the server runs in this process; with more, uvicorn's supervisor (this
    process) runs them as its children and, on SIGTERM or SIGINT, stops them before it exits.
    Either way nothing is left serving once this process has gone. A port that cannot be
    bound raises OSError before the model is loaded.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    os.environ[SERVE_ENV] = json.dumps({"model_uri": model_uri, "serve": limits.model_dump()})
    app = scoring_app() if workers == 1 else "senti.server:scoring_app"
    uvicorn.run(app, factory=workers > 1, host=host, port=port, workers=workers,
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
                log_config=None)  # uvicorn's lines go where senti's logging sends them
