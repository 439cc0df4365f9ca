#!/usr/bin/env bash
# End-to-end retrain time on the full default corpus, then a no-change rerun, in a fresh
# throw-away project (its own git + DVC repo and MLflow store). Extra args go to `senti retrain`.
#   bench/retrain_time.sh [--set key=value ...]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PATH="$repo/.venv/bin:$PATH" GX_ANALYTICS_ENABLED=False DO_NOT_TRACK=1
unset MLFLOW_TRACKING_URI
cp -r "$repo"/{dvc.yaml,params.yaml,config,src,.gitignore} "$work"/
cd "$work"
git init -q && git add -A && git -c user.email=b@senti.invalid -c user.name=bench commit -qm bench
dvc init -q && dvc config core.analytics false
for run in first no-change; do
  start=$(date +%s.%N)
  senti retrain "$@" > "$work/$run.log" 2>&1 || { tail -40 "$work/$run.log"; exit 1; }
  end=$(date +%s.%N)
  printf '%-10s %6.1f s\n' "$run" "$(echo "$end - $start" | bc)"
  grep -E '^(stages skipped|nothing changed|registered|unchanged inputs|promotion gate)' \
    "$work/$run.log" | sed 's/^/    /'
done
grep -E 'test accuracy' "$work/first.log"
