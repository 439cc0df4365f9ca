"""The registered model's code (MLflow models-from-code).

:func:`senti.registry.log_retrain` logs this file as the model, with a copy of the ``senti``
package as its code path; loading the model runs it, so nothing is unpickled and the
loading environment needs only the model's public requirements, not an installed senti.
"""

from mlflow.models import set_model

from senti.serve import SentimentPyfunc

set_model(SentimentPyfunc())
