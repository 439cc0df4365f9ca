"""Word2vec pretraining of the embedding layer: real gensim, real Keras, tiny corpora."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from senti.config import EmbeddingsParams, Layout, ModelParams, TrainParams, load_params
from senti.embeddings import embedding_matrix, initial_embedding, train_word_vectors
from senti.ingest import peoples_daily_texts
from senti.stages.embeddings import extra_corpus
from senti.train import train_model

REPO = Path(__file__).resolve().parents[2]
# Two sentiment poles that share no context words: word2vec must put the words of one pole
# nearer each other than the words of the other.
POSITIVE = [["质量", w, "推荐", "满意"] for w in ("好", "棒", "赞")]
NEGATIVE = [["服务", w, "退货", "失望"] for w in ("差", "烂", "糟")]
CORPUS = (POSITIVE + NEGATIVE) * 40
PARAMS = EmbeddingsParams(epochs=20, extra_corpus="", architecture="skipgram", window=2,
                          downsample=0.0, row_norm=0.7)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("architecture", ["skipgram", "cbow"])
def test_vectors_learn_which_words_share_contexts(architecture):
    params = PARAMS.model_copy(update={'architecture': architecture})
    vectors = train_word_vectors(CORPUS, 16, params, seed=1)
    assert set(vectors) == {w for s in CORPUS for w in s}
    same = _cosine(vectors["好"], vectors["棒"])
    other = _cosine(vectors["好"], vectors["差"])
    assert same > other + 0.3


@pytest.mark.slow  # trains
@pytest.mark.parametrize("architecture", ["skipgram", "cbow"])
def test_vectors_are_the_same_in_every_process(architecture):
    # Python salts str hashes per process; the vectors must not depend on that.
    code = ("import json, sys; from senti.config import EmbeddingsParams; "
            "from senti.embeddings import train_word_vectors; "
            "corpus, params = json.loads(sys.argv[1]); "
            "print(train_word_vectors(corpus, 8, EmbeddingsParams(**params), seed=1)['好']"
            ".tobytes().hex())")
    given = json.dumps([CORPUS, PARAMS.model_copy(update={"architecture": architecture})
                        .model_dump()])
    runs = {subprocess.run([sys.executable, "-c", code, given], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
            for seed in ("1", "2")}
    assert len(runs) == 1


def test_matrix_rows_follow_the_vocabulary_and_are_rescaled():
    vectors = {"好": np.array([3.0, 4.0]), "差": np.array([0.0, 1.0])}
    matrix, learnt = embedding_matrix(["<pad>", "<oov>", "好", "差", "没见过"], vectors, 2,
                                      row_norm=0.5, seed=0)
    assert learnt == 2 and matrix.shape == (5, 2) and matrix.dtype == np.float32
    # norms 5 and 1: their mean, 3, scales to 0.5, so every vector is divided by 6
    np.testing.assert_allclose(matrix[2], [0.5, 4 / 6], rtol=1e-6)
    np.testing.assert_allclose(matrix[3], [0.0, 1 / 6], rtol=1e-6)
    random_rows = matrix[[0, 1, 4]]
    assert np.all(np.abs(random_rows) <= 0.05) and np.any(random_rows != 0)


def test_matrix_rejects_vectors_of_another_size_and_a_bad_norm():
    with pytest.raises(ValueError, match="vectors have 3 dimensions, the model 2"):
        embedding_matrix(["<pad>", "好"], {"好": np.ones(3)}, 2, row_norm=0.7, seed=0)
    with pytest.raises(ValueError, match="row_norm must be > 0"):
        embedding_matrix(["<pad>"], {}, 2, row_norm=0.0, seed=0)


def test_no_pretraining_gives_a_random_matrix_without_a_corpus():
    tokens = ["<pad>", "<oov>", "好"]
    off = PARAMS.model_copy(update={'epochs': 0})
    matrix, learnt = initial_embedding(CORPUS, tokens, off, 4, seed=0)
    assert learnt == 0 and np.all(np.abs(matrix) <= 0.05)
    matrix, learnt = initial_embedding(CORPUS, tokens, PARAMS, 4, seed=0)
    assert learnt == 1 and np.linalg.norm(matrix[2]) == pytest.approx(0.7, rel=1e-5)


@pytest.mark.slow  # trains
def test_training_starts_from_the_initial_embedding(tmp_path):
    model_params = ModelParams(embed_dim=4, lstm_units=4, dropout=0.1, spatial_dropout=0.1,
                               maxlen=8)
    # learning rate 0 (refused in params.yaml) keeps every weight where it started
    frozen = TrainParams.model_construct(
        epochs=1, batch_size=8, learning_rate=0.0, weight_decay=0.0,
        label_smoothing=0.0, token_dropout=0.0, adversarial_eps=0.0, patience=1,
        lr_plateau_factor=1.0, class_weights=False, bucketed_batches=True, seed=0,
        deterministic=True, mixed_precision=False)
    rng = np.random.default_rng(0)
    split = ([list(rng.integers(2, 10, size=4)) for _ in range(16)], rng.integers(0, 2, size=16))
    start = rng.normal(size=(10, 4)).astype(np.float32)
    model, _ = train_model(split, split, 10, 2, model_params, frozen, tmp_path / "b", "t",
                           initial_embedding=start)
    np.testing.assert_array_equal(model.get_layer("embedding").get_weights()[0], start)
    with pytest.raises(ValueError, match=r"initial embedding has shape \(9, 4\), the model "
                                         r"needs \(10, 4\)"):
        train_model(split, split, 10, 2, model_params, frozen, tmp_path / "b", "t",
                    initial_embedding=start[:9])


def test_peoples_daily_is_plain_text_without_tags():
    texts = peoples_daily_texts()
    assert len(texts) > 19000
    assert texts[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert not any("/n " in t or " " in t for t in texts[:500])


def test_extra_corpus_is_the_news_normalised_and_segmented_like_the_pipeline_texts():
    params = load_params(REPO)
    with_news = params.model_copy(update={"embeddings": params.embeddings.model_copy(
        update={"extra_corpus": "peoples_daily"})})
    news = extra_corpus(with_news, Layout(REPO, params.paths))
    assert len(news) > 19000 and news["tokens"].map(len).min() >= 1
    assert news["text"].iloc[0] == "迈向充满希望的新世纪——一九九八年新年讲话(附图片1张)"  # NFKC
    assert news["tokens"].iloc[0][:3] == ["迈向", "充满希望", "的"]
    without = params.model_copy(update={"embeddings": params.embeddings.model_copy(
        update={"extra_corpus": ""})})
    assert extra_corpus(without, Layout(REPO, params.paths)).empty
