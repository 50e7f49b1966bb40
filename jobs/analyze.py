"""spark-submit entry point: `spark-submit [options] jobs/analyze.py run --config ... --date ...`.

Thin by design: all logic lives in cluster_spark; the master comes from spark-submit.
"""

import sys

from cluster_spark.cli import main

if __name__ == "__main__":
    sys.exit(main())
