#!/usr/bin/env bash
# Wheels to carry to a GPU machine that has torch (CUDA) and Python 3.12 but no Ray and no
# network: Ray (its Java jars, RLlib, the LLM library and the dashboard's source map taken
# out, to fit a 64 MiB upload) and the jsonschema packages Ray needs. Writes .whl/.
#   scripts/gpu-wheels.sh && <copy .whl there>
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RAY=$("$PY" -c "import ray; print(ray.__version__)")
PLAT=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q "${PLAT[@]}" -d "$work" "ray==$RAY"
"$PY" -m pip download -q "${PLAT[@]}" -d .whl jsonschema jsonschema-specifications referencing rpds-py
wheel=$(ls "$work"/ray-*.whl)
mkdir "$work/x"
(cd "$work/x" && unzip -q "$wheel" && rm -rf ray/jars ray/rllib ray/llm ray/dashboard/client/build/static/js/*.map)
"$PY" - "$work/x" "$RAY" <<'PY'
import os, sys
root, version = sys.argv[1], sys.argv[2]
record = os.path.join(root, f"ray-{version}.dist-info", "RECORD")
with open(record) as f:
    lines = [l for l in f if os.path.exists(os.path.join(root, l.split(",")[0])) or l.startswith(f"ray-{version}.dist-info/RECORD")]
with open(record, "w") as f:
    f.writelines(lines)
PY
(cd "$work/x" && zip -q -r -9 "$OLDPWD/.whl/$(basename "$wheel")" .)
du -sh .whl
