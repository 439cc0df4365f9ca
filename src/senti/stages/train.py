"""Stage ``train``: fit the BiLSTM on the encoded training split, read from disk in batches:
the tokens file a batch at a time, encoded into ``paths.encoded`` (scratch, removed when the
stage ends), which the input pipeline memory-maps and reads a few hundred texts at a time."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from senti.config import load_context
from senti.io import read_json, sha256_file, write_json
from senti.model import weights_sha256
from senti.stages import main, split_batches
from senti.train import train_model
from senti.vocab import encode_to_file, load_vocab


def run(root: Path) -> dict:
    params, layout = load_context(root)
    vocabulary, labels = load_vocab(layout.vocab), read_json(layout.labels)
    shutil.rmtree(layout.encoded, ignore_errors=True)  # a killed run's
    layout.encoded.mkdir(parents=True)
    try:  # the splits' token ids on disk, read by the input pipeline as it needs them
        splits = {s: encode_to_file(
            ((rows["tokens"], rows["label"])
             for rows in split_batches(layout.tokens, s, ["tokens", "label"])),
            vocabulary, params.model.maxlen, labels, layout.encoded / f"{s}.int32")
            for s in ("train", "val")}
        started = time.perf_counter()
        model, history = train_model(
            splits["train"], splits["val"], len(vocabulary), len(labels), params.model,
            params.train, backup_dir=layout.checkpoints,
            data_fingerprint=sha256_file(layout.tokens) + sha256_file(layout.vocab)
            + sha256_file(layout.embeddings),
            initial_embedding=np.load(layout.embeddings, allow_pickle=False))
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(layout.encoded, ignore_errors=True)
    for folder in (layout.model_dir, layout.train_history.parent):  # absent in a bare checkout
        folder.mkdir(parents=True, exist_ok=True)
    model.save(layout.model_file)
    pd.DataFrame(history).rename_axis("epoch").reset_index().to_csv(
        layout.train_history, index=False)
    best = int(np.argmin(history["val_loss"]))
    report = {
        "epochs_run": len(history["loss"]),
        "best_epoch": best + 1,
        "best_val_loss": round(history["val_loss"][best], 5),
        "best_val_accuracy": round(history["val_accuracy"][best], 5),
        "train_rows": len(splits["train"][1]),
        "parameters": int(model.count_params()),
        "weights_sha256": weights_sha256(model),  # a retrain reproduces it bit for bit
    }
    write_json(layout.train_report, report)
    print(f"trained {report['epochs_run']} epochs in {seconds:.0f}s; best epoch {best + 1}")
    return report


if __name__ == "__main__":
    main(run)
