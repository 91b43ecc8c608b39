#!/usr/bin/env bash
# Set up a virtualenv with the test extras (CPU torch pinned) and run lint, types and tests:
# unit tests first (no Ray), then the integration tests (real Ray, MLflow, torch.distributed).
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q -U pip
# constraints/cpu.txt pins the CPU build of torch; the package itself only asks for a range.
python -m pip install -q -c constraints/cpu.txt -e ".[test]"
bash scripts/build-horovod.sh

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict on the pure cores)"
mypy resolute/search
[ -f resolute/runtime/policy.py ] && mypy resolute/runtime/policy.py

export RESOLUTE_HOME=${RESOLUTE_HOME:-$(mktemp -d /tmp/resolute-home.XXXXXX)}
echo "== unit tests"
python -m pytest tests/unit -q -p no:cacheprovider "$@"
echo "== integration tests"
python -m pytest tests/integration -q -p no:cacheprovider "$@"
