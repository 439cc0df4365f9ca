"""Prefect flow ``batch-predict``: classify a CSV of texts with a registered version
(default: the @champion), the version written in every output row. Input and output are
files under the project's ``serve.batch_dirs`` (relative paths: from the project root); a
deployment's project is fixed when it is served. The chunks run where ``serve.batch_engine``
says (``engine`` overrides it: ``dask`` = the cluster of params.yaml's ``dask`` section);
a progress artifact follows them, and a rerun after a failure skips the finished ones."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from senti import registry
from senti.config import load_context, project_root


@flow(name="batch-predict", log_prints=True)
def batch_predict(input_csv: str, output_csv: str, root: str | None = None,
                  version: str | None = None, text_column: str = "text",
                  engine: Literal["local", "dask"] | None = None) -> dict[str, Any]:
    """Predict every row of ``input_csv`` into ``output_csv`` (see :mod:`senti.batch`)."""
    params, layout = load_context(project_root(root))
    artifact: list[UUID] = []

    def progress(done: int, total: int) -> None:
        percent = 100.0 * done / total
        if not artifact:
            artifact.append(create_progress_artifact(
                percent, key="batch-predict-progress", description=f"chunks of {input_csv}"))
        else:
            update_progress_artifact(artifact[0], percent, description=f"{done}/{total} chunks")

    report = registry.predict_csv(layout, params, input_csv, output_csv, version, text_column,
                                  engine, progress)
    get_run_logger().info("%s rows in %.1fs with %s v%s on %s (%s of %s chunks from an "
                          "earlier run)", report["rows"], report["seconds"], report["model"],
                          report["model_version"], report["engine"],
                          report["resumed_chunks"], report["chunks"])
    create_markdown_artifact(
        f"# Batch prediction\n\n`{input_csv}` -> `{output_csv}`: {report['rows']} rows with "
        f"{report['model']} v{report['model_version']} ({report['rows_per_second']} rows/s).\n",
        key="batch-predict", description=f"{report['rows']} rows, v{report['model_version']}")
    return report
