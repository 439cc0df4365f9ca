"""The MLflow tag schema: every tag, alias and artifact name senti writes or reads.

One module, so the writer (:mod:`senti.registry`) and the readers (:mod:`senti.lineage`,
the gate, the flows) cannot drift apart. Nothing here imports MLflow.

Run tags (one retrain = one run):

- ``dvc.<stage>.<deps|outs>.<path>``: content hash of each dependency and output in dvc.lock;
- ``git.commit``, ``git.dirty``: the code that ran;
- ``jieba.version``, ``vocab.sha256``: the segmenter and the exact vocabulary;
- ``prefect.flow_run_id``, ``prefect.deployment``: the orchestration run;
- ``senti.inputs_fingerprint``: a hash of every input
  (:func:`senti.versioning.inputs_fingerprint`);
- ``senti.policy_overrides``, ``senti.policy_reason``: only on a run whose per-run params
  loosened the checked-in validation or promotion policy;
- ``senti.drift``: the features in which the run's data drifted from the champion's
  (:mod:`senti.drift`), or ``none``; absent when there was nothing to compare with.

Model-version tags: the fingerprint, ``git.commit``, ``vocab.sha256``, ``prefect.flow_run_id``,
``senti.validation``, ``senti.labels``, the policy-override tags, and the ``promote.*``
record of the latest gate decision on the version, including ``promote.previous_champion``:
the champion a promotion replaced, which :func:`senti.registry.rollback` follows. Nothing is
written as a registered-model tag (MLflow's SQL schema caps those at 5,000 characters).
"""

from __future__ import annotations

from typing import Final

NONE: Final = "none"  # the value of a tag whose fact does not apply (e.g. no deployment)

# aliases
CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"

# run tags
DVC_PREFIX: Final = "dvc."
GIT_COMMIT: Final = "git.commit"
GIT_DIRTY: Final = "git.dirty"
JIEBA_VERSION: Final = "jieba.version"
VOCAB_SHA256: Final = "vocab.sha256"
PREFECT_FLOW_RUN: Final = "prefect.flow_run_id"
PREFECT_DEPLOYMENT: Final = "prefect.deployment"
FINGERPRINT: Final = "senti.inputs_fingerprint"
# a run whose `--set` loosened the checked-in validation or promotion policy (needs --force):
# JSON {"section.key": [checked-in, effective]}, and the operator's reason
POLICY_OVERRIDES: Final = "senti.policy_overrides"
POLICY_REASON: Final = "senti.policy_reason"
DRIFT: Final = "senti.drift"  # comma-separated drifted features, or NONE

# model-version tags
VALIDATION: Final = "senti.validation"  # "passed" | "failed": the training data's validation
LABELS: Final = "senti.labels"  # JSON list: the label set, in class-index order
VERSION_TAGS: Final = (FINGERPRINT, GIT_COMMIT, VOCAB_SHA256, PREFECT_FLOW_RUN,  # from the run
                       POLICY_OVERRIDES, POLICY_REASON)
PROMOTE_PREFIX: Final = "promote."
# promoted | rejected | forced | policy-overridden | rollback
DECISION: Final = "promote.decision"
REASON: Final = "promote.reason"
DECIDED_AT: Final = "promote.time"
DECISION_FLOW_RUN: Final = "promote.flow_run_id"  # the Prefect run that decided
CHAMPION_VERSION: Final = "promote.champion_version"  # the champion when it was decided
PREVIOUS_CHAMPION: Final = "promote.previous_champion"  # the version this one replaced
ROLLED_BACK: Final = "promote.rolled_back"  # time this version was rolled back from

# run artifacts
REPORTS_DIR: Final = "reports"  # the pipeline's reports directory, logged whole
LINEAGE_RECORD: Final = "lineage.json"  # what `senti lineage verify` checks
PARAMS_ARTIFACT: Final = "lineage/params.yaml"  # the params.yaml that trained the model
DVC_LOCK_ARTIFACT: Final = "lineage/dvc.lock"
DECISIONS_TABLE: Final = "promotion/decisions.json"  # every gate decision and rollback
BEHAVIOUR_TABLE: Final = "promotion/behaviour.json"
MODEL_NAME: Final = "model"  # the logged model's name within its run
DRIFT_PROFILE: Final = "drift/profile.json"  # its data and test predictions, summarised
DRIFT_REPORT: Final = "drift/report.json"  # its data against the champion's...
DRIFT_REPORT_MD: Final = "drift/report.md"  # ...and the same as markdown
