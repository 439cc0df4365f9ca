import pytest

from senti.segment import Segmenter, segment_texts
from senti.vocab import OOV_ID, Vocabulary, build_vocab, load_vocab, save_vocab


def test_vocab_reserves_pad_and_oov_and_is_deterministic():
    docs = [["好", "很", "好"], ["差", "很"], ["好", "稀有"]]
    vocab = build_vocab(docs, min_freq=2, max_size=10)
    assert vocab.tokens == ("<pad>", "<oov>", "好", "很")
    assert vocab.encode(["好", "没见过"], maxlen=5) == [2, OOV_ID]
    assert vocab.encode([], maxlen=5) == [OOV_ID]  # never an all-padding row
    assert vocab.encode(["好"] * 9, maxlen=3) == [2, 2, 2]
    assert build_vocab(docs, 1, 3).tokens == ("<pad>", "<oov>", "好")
    assert vocab.oov_rate([["好", "x"], ["y"]]) == pytest.approx(2 / 3)


def test_vocab_round_trips_as_json_with_its_hash(tmp_path):
    vocab = build_vocab([["质量", "很好"]], 1, 100)
    digest = save_vocab(vocab, tmp_path / "vocab.json")
    assert load_vocab(tmp_path / "vocab.json") == vocab
    assert len(digest) == 64
    with pytest.raises(ValueError, match="not a senti vocabulary"):
        Vocabulary.from_json('{"tokens": []}')


def test_user_dictionary_changes_segmentation(tmp_path):
    text = "这个宝贝性价比超高"
    user_dict = tmp_path / "dict.txt"
    user_dict.write_text("性价比超高 100 n\n", encoding="utf-8")
    assert "性价比超高" not in Segmenter().cut(text)
    assert "性价比超高" in Segmenter(user_dict).cut(text)
    with pytest.raises(FileNotFoundError, match="user dictionary"):
        Segmenter(tmp_path / "missing.txt")


def test_parallel_segmentation_matches_serial_order():
    texts = [f"第{i}个评论：质量很好，物流也快" if i % 2 else "太差了 再也不买了"
             for i in range(4100)]
    assert segment_texts(texts, workers=2) == segment_texts(texts, workers=1)
