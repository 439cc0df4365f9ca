"""The registered model carries its own code (MLflow models-from-code) and pins only public
requirements: it loads and predicts in a fresh virtualenv where no senti is installed, using
the copy of senti logged with it, and nothing is unpickled."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow
import pytest

from senti import registry
from senti.config import load_context

pytestmark = pytest.mark.slow

# Run in the fresh environment: senti must not be importable until the model is loaded.
LOAD_AND_PREDICT = """
import importlib.util, json, sys
assert importlib.util.find_spec("senti") is None, "senti is installed in this environment"
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"text": ["质量很好，物流也快", "太差了，再也不买了"]}))
import senti
print(json.dumps({"senti": senti.__file__, "columns": list(out.columns),
                  "labels": out["label"].tolist()}))
"""


def fresh_venv(path: Path) -> Path:
    """A virtualenv with nothing installed that sees this environment's third-party
    packages through a ``.pth`` line. A directory added that way does not run its own
    ``.pth`` files, so the editable install of senti stays invisible. Its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = next((path / "lib").glob("python3*/site-packages"))
    (site / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n",
                                         encoding="utf-8")
    return path / "bin" / "python"


def test_registered_model_needs_no_installed_senti(trained_project, tmp_path):
    params, layout = load_context(trained_project[0])
    registry.configure(layout, params.registry.experiment)
    model_dir = Path(mlflow.artifacts.download_artifacts(
        f"models:/{params.registry.model_name}/1", dst_path=str(tmp_path / "model")))
    lines = (model_dir / "requirements.txt").read_text(encoding="utf-8").split()
    pinned = {re.split(r"[=<>!~;\[]", line)[0].lower() for line in lines
              if not line.startswith("#")}
    assert "senti" not in pinned
    assert pinned == {name.lower() for name in registry.RUNTIME_REQUIREMENTS}
    assert (model_dir / "code" / "senti" / "serve.py").is_file()
    assert not list(model_dir.rglob("*.pkl"))  # the model is code, not a pickle

    python = fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), "-c", LOAD_AND_PREDICT, str(model_dir)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["senti"]).is_relative_to(model_dir / "code" / "senti")
    assert result["columns"] == ["label", "probability", "prob_negative", "prob_positive",
                                 "known_share", "flag"]
    assert set(result["labels"]) <= {"negative", "positive"}
