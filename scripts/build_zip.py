"""Zip the `cluster_spark` package for `spark-submit --py-files` (a wheel is not importable
from executors' PYTHONPATH, a zip with the package at its top level is).

    python scripts/build_zip.py [OUT]      # default: dist/cluster_spark.zip

Deterministic (sorted entries, fixed timestamps, no __pycache__) and written atomically, so
concurrent builds (parallel Airflow tasks) never leave a half-written zip behind.
"""

from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cluster_spark"


def build(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    fd, tmp = tempfile.mkstemp(prefix=".cluster_spark.", suffix=".zip", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                info = zipfile.ZipInfo(str(path.relative_to(PACKAGE.parent)), (1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist" / "cluster_spark.zip"
    print(build(target))
