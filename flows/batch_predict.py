"""Prefect flow ``batch-predict``: classify a CSV of texts with a registered version
(default: the @champion), the version written in every output row. Input and output are
files under the project's ``serve.batch_dirs`` (relative paths: from the project root); a
deployment's project is fixed when it is served."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from senti import registry
from senti.config import load_context, project_root


@flow(name="batch-predict", log_prints=True)
def batch_predict(input_csv: str, output_csv: str, root: str | None = None,
                  version: str | None = None, text_column: str = "text") -> dict[str, Any]:
    """Predict every row of ``input_csv`` into ``output_csv`` (see :mod:`senti.batch`)."""
    params, layout = load_context(project_root(root))
    report = registry.predict_csv(layout, params, input_csv, output_csv, version, text_column)
    get_run_logger().info("%s rows in %.1fs with %s v%s", report["rows"], report["seconds"],
                          report["model"], report["model_version"])
    create_markdown_artifact(
        f"# Batch prediction\n\n`{input_csv}` -> `{output_csv}`: {report['rows']} rows with "
        f"{report['model']} v{report['model_version']} ({report['rows_per_second']} rows/s).\n",
        key="batch-predict", description=f"{report['rows']} rows, v{report['model_version']}")
    return report
