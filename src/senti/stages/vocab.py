"""Stage ``vocab``: the vocabulary of the training split, read from the tokens file in
batches (never whole: one pass for the training counts, one per split for its OOV rate)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from senti.config import load_context
from senti.io import write_json
from senti.stages import main, split_batches
from senti.vocab import build_vocab, save_vocab


def token_lists(path: Path, split: str) -> Iterator[list[str]]:
    """The token lists of the texts of one ``split``, in file order."""
    for rows in split_batches(path, split, ["tokens"]):
        yield from rows["tokens"]


def run(root: Path) -> dict:
    params, layout = load_context(root)
    vocabulary = build_vocab(token_lists(layout.tokens, "train"), params.vocab.min_freq,
                             params.vocab.max_size)
    digest = save_vocab(vocabulary, layout.vocab)
    report = {
        "size": len(vocabulary),
        "sha256": digest,
        "oov_rate": {s: round(vocabulary.oov_rate(token_lists(layout.tokens, s)), 5)
                     for s in ("val", "test")},
    }
    write_json(layout.vocab_report, report)
    return report


if __name__ == "__main__":
    main(run)
