"""Stage ``vocab``: the vocabulary of the training split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from senti.config import load_context
from senti.io import write_json
from senti.stages import main
from senti.vocab import build_vocab, save_vocab


def run(root: Path) -> dict:
    params, layout = load_context(root)
    tokens = pd.read_parquet(layout.tokens)
    by_split = {s: tokens.loc[tokens["split"] == s, "tokens"] for s in ("train", "val", "test")}
    vocabulary = build_vocab(by_split["train"], params.vocab.min_freq, params.vocab.max_size)
    digest = save_vocab(vocabulary, layout.vocab)
    report = {
        "size": len(vocabulary),
        "sha256": digest,
        "oov_rate": {s: round(vocabulary.oov_rate(by_split[s]), 5) for s in ("val", "test")},
    }
    write_json(layout.vocab_report, report)
    return report


if __name__ == "__main__":
    main(run)
