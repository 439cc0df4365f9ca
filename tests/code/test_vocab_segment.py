import json

import pytest

from senti.config import MAX_MAXLEN, MAX_VOCAB_SIZE
from senti.segment import (
    MAX_USER_DICT_BYTES,
    MAX_USER_WORD_CHARS,
    Segmenter,
    segment_texts,
)
from senti.vocab import (
    OOV_ID,
    Vocabulary,
    build_vocab,
    load_vocab,
    save_vocab,
)
from tests.conftest import REPO


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


RESERVED = {"format": "senti-vocab/1", "pad_id": 0, "oov_id": 1}


@pytest.mark.parametrize(("payload", "problem"), [
    ([], "not a senti vocabulary file"),
    ({**RESERVED, "pad_id": 1, "tokens": ["<pad>", "<oov>"]}, "must reserve pad_id 0"),
    (RESERVED, "tokens must be a list of strings"),
    ({**RESERVED, "tokens": None}, "tokens must be a list of strings"),
    ({**RESERVED, "tokens": {"<pad>": 0}}, "tokens must be a list of strings"),
    ({**RESERVED, "tokens": ["<pad>", "<oov>", ["好"]]}, "tokens must be a list of strings"),
    ({**RESERVED, "tokens": ["<pad>", "<oov>", "好", "好"]}, "tokens must be distinct"),
    ({**RESERVED, "tokens": ["<oov>", "<pad>"]}, "must start with the padding and OOV"),
    ({**RESERVED, "tokens": ["<pad>", "<oov>", *map(str, range(MAX_VOCAB_SIZE - 1))]},
     f"vocabulary of {MAX_VOCAB_SIZE + 1} tokens; the limit is {MAX_VOCAB_SIZE}"),
])
def test_a_malformed_vocabulary_file_is_refused_naming_the_problem(payload, problem):
    with pytest.raises(ValueError, match=problem):
        Vocabulary.from_json(json.dumps(payload))


@pytest.mark.parametrize("maxlen", [0, -1, True, 2.5, MAX_MAXLEN + 1])
def test_encode_refuses_a_maxlen_that_is_not_a_sane_positive_integer(maxlen):
    vocab = build_vocab([["好", "差"]], 1, 10)
    with pytest.raises(ValueError, match=f"maxlen must be an integer from 1 to {MAX_MAXLEN}"):
        vocab.encode(["好", "差"], maxlen)


def test_user_dictionary_changes_segmentation(tmp_path):
    text = "这个宝贝性价比超高"
    user_dict = tmp_path / "dict.txt"
    user_dict.write_text("性价比超高 100 n\n", encoding="utf-8")
    assert "性价比超高" not in Segmenter().cut(text)
    assert "性价比超高" in Segmenter(user_dict).cut(text)
    with pytest.raises(FileNotFoundError, match="user dictionary"):
        Segmenter(tmp_path / "missing.txt")


def test_the_projects_user_dictionary_is_within_the_bounds():
    assert "性价比" in Segmenter(REPO / "config" / "userdict.txt").cut("这个性价比很高")


def test_a_user_dictionary_word_over_the_bound_is_refused_naming_the_line(tmp_path):
    user_dict = tmp_path / "dict.txt"
    user_dict.write_text(f"性价比 10 n\n\n{'好' * (MAX_USER_WORD_CHARS + 1)}\n", encoding="utf-8")
    message = rf"{user_dict} line 3: a word of {MAX_USER_WORD_CHARS + 1} characters; " \
              rf"the limit is {MAX_USER_WORD_CHARS}"
    with pytest.raises(ValueError, match=message):
        Segmenter(user_dict)
    texts = ["质量很好"] * 4100  # more than one chunk: refused before any task runs
    with pytest.raises(ValueError, match=message):
        segment_texts(texts, user_dict, workers=2)


def test_a_user_dictionary_over_the_size_bound_is_refused(tmp_path):
    user_dict = tmp_path / "dict.txt"
    user_dict.write_bytes("好评 10 n\n".encode() * (MAX_USER_DICT_BYTES // 10 + 1))
    with pytest.raises(ValueError, match=f"{user_dict} is larger than the limit of "
                                         f"{MAX_USER_DICT_BYTES} bytes"):
        Segmenter(user_dict)


def test_parallel_segmentation_matches_serial_order():
    texts = [f"第{i}个评论：质量很好，物流也快" if i % 2 else "太差了 再也不买了"
             for i in range(4100)]
    assert segment_texts(texts, workers=2) == segment_texts(texts, workers=1)
