"""Inference latency and throughput through the registered pyfunc model.

Single-text latency (p50/p99 of `pyfunc.predict` on one text) and batch throughput, next to
jieba-only segmentation throughput on the same texts measured in the same run. For context it
also times the slow paths the pyfunc avoids: an eager Keras call and `model.predict`.

    python bench/serve_latency.py [--model-uri models:/senti-sentiment@champion] [--n 300]
"""

from __future__ import annotations

import argparse
import json
import time

import mlflow.pyfunc
import numpy as np
import pandas as pd

from senti import registry
from senti.config import load_context
from senti.segment import Segmenter


def percentile_ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri")
    parser.add_argument("--n", type=int, default=300, help="single-text calls to time")
    args = parser.parse_args()
    params, layout = load_context(".")
    registry.configure(layout, params.registry.experiment)
    uri = args.model_uri or registry.resolve_model_uri(params.registry.model_name)
    model = mlflow.pyfunc.load_model(uri)
    texts = pd.read_parquet(layout.tokens, columns=["text", "split"])
    texts = texts.loc[texts["split"] == "test", "text"].tolist()

    for text in texts[:20]:  # warm-up: first calls trace the graph
        model.predict(pd.DataFrame({"text": [text]}))
    single = []
    for text in texts[: args.n]:
        started = time.perf_counter()
        model.predict(pd.DataFrame({"text": [text]}))
        single.append(time.perf_counter() - started)

    batch_frame = pd.DataFrame({"text": texts})
    segmenter = Segmenter(layout.root / params.segment.user_dict)
    batch_s, jieba_s = [], []
    for _ in range(3):  # alternate the two, report medians
        started = time.perf_counter()
        model.predict(batch_frame)
        batch_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        for text in texts:
            segmenter.cut(text)
        jieba_s.append(time.perf_counter() - started)
    batch_tps = len(texts) / float(np.median(batch_s))
    jieba_tps = len(texts) / float(np.median(jieba_s))

    predictor = model.unwrap_python_model().predictor
    ids = np.array([predictor.encode(texts[0])], dtype=np.int32)
    eager, keras_predict = [], []
    for _ in range(10):
        started = time.perf_counter()
        predictor.model(ids, training=False)
        eager.append(time.perf_counter() - started)
        started = time.perf_counter()
        predictor.model.predict(ids, verbose=0)
        keras_predict.append(time.perf_counter() - started)

    print(json.dumps({
        "model_uri": uri,
        "single_text_calls": len(single),
        "single_p50_ms": percentile_ms(single, 50),
        "single_p99_ms": percentile_ms(single, 99),
        "batch_texts": len(texts),
        "batch_texts_per_s": round(batch_tps, 1),
        "jieba_only_texts_per_s": round(jieba_tps, 1),
        "batch_vs_jieba": round(batch_tps / jieba_tps, 3),
        "eager_keras_call_p50_ms": percentile_ms(eager, 50),
        "keras_model_predict_p50_ms": percentile_ms(keras_predict, 50),
    }, indent=2))


if __name__ == "__main__":
    main()
