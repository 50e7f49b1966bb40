#!/usr/bin/env bash
# Run jobs/analyze.py under spark-submit, with the Delta jars and the zipped package.
#
#   scripts/submit.sh [SPARK-SUBMIT OPTIONS --] ANALYZE ARGS
#   scripts/submit.sh --master spark://host:7077 -- run --config conf/demo.yaml \
#       --date 2026-02-01 --root /shared/out/demo
#
# Without a `--`, every argument goes to jobs/analyze.py. Environment:
#   SPARK_MASTER          master when none is given as an option (default local[*])
#   CLUSTER_SPARK_VENV    the project venv: driver python + spark-submit (default ./.venv)
#   CLUSTER_SPARK_JARS    directory of the Delta jars (default ./.jars, `make jars`)
#   PYSPARK_PYTHON        python of the executors' Python workers (default: the venv's;
#                         on a real cluster a python3.11 that exists on every worker host)
#   SUBMIT_ECHO=1         print the spark-submit command line to stderr before running it
# The driver runs with the venv's python (scipy, pydantic, ... are needed there only);
# executors get the package from dist/cluster_spark.zip (rebuilt here if src/ is newer).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CLUSTER_SPARK_VENV:-$ROOT/.venv}"
JAR_DIR="${CLUSTER_SPARK_JARS:-$ROOT/.jars}"
ZIP="$ROOT/dist/cluster_spark.zip"

if [[ ! -f "$ZIP" ]] || [[ -n "$(find "$ROOT/src/cluster_spark" -newer "$ZIP" -print -quit)" ]]; then
  "$VENV/bin/python" "$ROOT/scripts/build_zip.py" "$ZIP" >/dev/null
fi
shopt -s nullglob
jar_list=("$JAR_DIR"/*.jar)
if (( ${#jar_list[@]} == 0 )); then
  echo "submit.sh: no Delta jars in $JAR_DIR (run: make jars)" >&2
  exit 2
fi
JARS="$(IFS=,; echo "${jar_list[*]}")"

submit_opts=()
if [[ " $* " == *" -- "* ]]; then
  while (( $# )) && [[ "$1" != "--" ]]; do submit_opts+=("$1"); shift; done
  shift
fi
has_master=0
for opt in "${submit_opts[@]}"; do [[ "$opt" == --master* ]] && has_master=1; done
(( has_master )) || submit_opts=(--master "${SPARK_MASTER:-local[*]}" "${submit_opts[@]}")

export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$VENV/bin/python}"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
cmd=(
  "$VENV/bin/spark-submit"
  "${submit_opts[@]}"
  --jars "$JARS"
  --py-files "$ZIP"
  --conf "spark.pyspark.driver.python=$VENV/bin/python"
  --conf "spark.pyspark.python=$PYSPARK_PYTHON"
  "$ROOT/jobs/analyze.py" "$@"
)
if [[ "${SUBMIT_ECHO:-0}" == 1 ]]; then
  echo "+ PYSPARK_PYTHON=$PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON=$PYSPARK_DRIVER_PYTHON ${cmd[*]@Q}" >&2
fi
exec "${cmd[@]}"
