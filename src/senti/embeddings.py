"""Embeddings: word2vec vectors that initialise the classifier's embedding layer.

The BiLSTM sees ~14k labelled texts; vectors learnt first from the same texts plus unlabelled
Chinese text give it word similarities it could not learn from the labels alone (the one
lever that put it past the linear baseline, docs/benchmarks.md). gensim is imported only here.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from senti.config import EmbeddingsParams

# Keras' default Embedding initialiser, kept for the words the vectors do not cover.
_RANDOM_INIT_SCALE = 0.05


def _stable_hash(text: str) -> int:
    """gensim documents seeding word vectors with ``hashfxn(word + str(seed))``, and Python
    salts ``hash`` of a str per process (``PYTHONHASHSEED``). gensim 4.4 draws the initial
    vectors from ``seed`` alone; this keeps any version that hashes words salt-free."""
    return zlib.crc32(text.encode("utf-8"))


def train_word_vectors(
    sentences: Sequence[Sequence[str]], dim: int, params: EmbeddingsParams, seed: int,
) -> dict[str, np.ndarray]:
    """Word2vec vectors (``params.architecture``, negative sampling) of every token in
    ``sentences``.

    The same sentences, params and seed give bit-identical vectors in every process: one
    worker thread (gensim's threads race on shared weights, so their updates land in an
    order the scheduler picks); the vocabulary follows the corpus order; initial vectors,
    negative samples and downsampling draw from ``seed``; word hashes are unsalted.
    """
    from gensim.models import Word2Vec

    model = Word2Vec(sentences=[list(s) for s in sentences], vector_size=dim,
                     sg=int(params.architecture == "skipgram"), window=params.window,
                     sample=params.downsample, min_count=1, epochs=params.epochs, workers=1,
                     seed=seed, hashfxn=_stable_hash)
    return {word: model.wv.vectors[i] for i, word in enumerate(model.wv.index_to_key)}


def embedding_matrix(
    tokens: Sequence[str], vectors: dict[str, np.ndarray], dim: int, *,
    row_norm: float, seed: int,
) -> tuple[np.ndarray, int]:
    """Initial embedding weights for a vocabulary (row i = ``tokens[i]``) and how many rows
    came from ``vectors``.

    Covered rows are the vectors rescaled so their mean L2 norm is ``row_norm``: the scale
    the adversarial perturbation (``train.adversarial_eps``, an absolute norm) was tuned for.
    The other rows (padding, OOV, words absent from the corpus) keep Keras' default
    uniform(-0.05, 0.05) initialisation.
    """
    if row_norm <= 0:
        raise ValueError(f"row_norm must be > 0, got {row_norm}")
    rng = np.random.default_rng(seed)
    matrix = rng.uniform(-_RANDOM_INIT_SCALE, _RANDOM_INIT_SCALE,
                         (len(tokens), dim)).astype(np.float32)
    rows = [i for i, token in enumerate(tokens) if token in vectors]
    if rows:
        covered = np.stack([vectors[tokens[i]] for i in rows]).astype(np.float32)
        if covered.shape[1] != dim:
            raise ValueError(f"vectors have {covered.shape[1]} dimensions, the model {dim}")
        norms = np.linalg.norm(covered, axis=1)
        if norms.mean() > 0:
            matrix[rows] = covered * (row_norm / norms.mean())
    return matrix, len(rows)


def initial_embedding(
    sentences: Sequence[Sequence[str]], tokens: Sequence[str], params: EmbeddingsParams,
    dim: int, seed: int,
) -> tuple[np.ndarray, int]:
    """The embedding weights training starts from: vectors learnt on ``sentences`` for the
    vocabulary ``tokens`` (all random with ``params.epochs`` 0), and how many rows were learnt."""
    vectors = train_word_vectors(sentences, dim, params, seed) if params.epochs else {}
    return embedding_matrix(tokens, vectors, dim, row_norm=params.row_norm, seed=seed)
