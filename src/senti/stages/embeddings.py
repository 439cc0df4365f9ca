"""Stage ``embeddings``: word vectors learnt on the training texts (and the extra corpus)
become the initial embedding matrix of the vocabulary."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from senti import ingest
from senti.config import PEOPLES_DAILY, Layout, Params, load_context
from senti.embeddings import initial_embedding
from senti.io import atomic_write_bytes, sha256_file, write_json
from senti.prepare import normalise_text
from senti.segment import segment_texts
from senti.stages import main
from senti.vocab import load_vocab


def extra_corpus(params: Params, layout: Layout) -> pd.DataFrame:
    """The unlabelled texts (``embeddings.extra_corpus``) word vectors learn from besides the
    training texts, normalised and segmented as the pipeline's own (columns text, tokens)."""
    if params.embeddings.extra_corpus != PEOPLES_DAILY:
        return pd.DataFrame({"text": [], "tokens": []})
    texts = [t for t in map(normalise_text, ingest.peoples_daily_texts()) if t]
    user_dict = params.segment.user_dict_path(layout.root)
    return pd.DataFrame({"text": texts, "tokens": segment_texts(
        texts, user_dict, params.segment.workers)})


def run(root: Path) -> dict:
    params, layout = load_context(root)
    tokens, vocabulary = pd.read_parquet(layout.tokens), load_vocab(layout.vocab)
    started = time.perf_counter()
    sentences: list[list[str]] = []
    extra = pd.DataFrame({"tokens": []})
    if params.embeddings.epochs:  # with 0 the corpus is not needed
        extra = extra_corpus(params, layout)
        sentences = [*map(list, tokens.loc[tokens["split"] == "train", "tokens"]),
                     *map(list, extra["tokens"])]
    matrix, learnt = initial_embedding(sentences, vocabulary.tokens, params.embeddings,
                                       params.model.embed_dim, params.train.seed)
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    atomic_write_bytes(layout.embeddings, buffer.getvalue())
    report = {
        "pretrained": bool(sentences),
        "corpus_texts": len(sentences),
        "corpus_tokens": sum(map(len, sentences)),
        "extra_corpus": params.embeddings.extra_corpus or None,
        "extra_corpus_texts": len(extra),
        "extra_corpus_sha256": (sha256_file(ingest.peoples_daily_file())
                                if len(extra) else None),
        "vocab_rows_learnt": learnt,
        "vocab_coverage": round(learnt / len(vocabulary), 5),
        "shape": list(matrix.shape),
        "sha256": sha256_file(layout.embeddings),
    }
    write_json(layout.embeddings_report, report)
    print(f"initial embedding {matrix.shape}: {learnt} rows learnt from "
          f"{report['corpus_tokens']} tokens in {time.perf_counter() - started:.0f}s")
    return report


if __name__ == "__main__":
    main(run)
