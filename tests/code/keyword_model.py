"""A sentiment "model" without training, logged from code by tests/code/test_promote_flow.py:
negative iff the text contains 不. Its output has the columns senti's gate scores."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd


class KeywordModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        negative = model_input["text"].str.contains("不").to_numpy(dtype=float)
        return pd.DataFrame({"label": np.where(negative > 0, "negative", "positive"),
                             "prob_negative": negative, "prob_positive": 1 - negative})


mlflow.models.set_model(KeywordModel())
