"""spark-submit entry point: `spark-submit [options] jobs/analyze.py run --config ... --date ...`.

Thin by design: all logic lives in cluster_spark; the master comes from spark-submit.
`scripts/submit.sh` adds what a cluster needs (Delta jars via --jars, the package as
dist/cluster_spark.zip via --py-files, the project venv's python for the driver):

    scripts/submit.sh --master spark://HOST:7077 -- run --config conf/demo.yaml \
        --date 2026-02-01 --root /shared/out/demo
"""

import sys

from cluster_spark.cli import main

if __name__ == "__main__":
    sys.exit(main())
