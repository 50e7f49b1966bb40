"""Issue #18, packaging: the wheel `make dist` builds has the right metadata (Spark only as
the `spark` extra, since clusters bring their own), carries every module of the package
and its `cluster-spark` entry point, and imports from an installed copy."""

from __future__ import annotations

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cluster_spark"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (found,) = out.glob("cluster_spark-*-py3-none-any.whl")
    return found


@pytest.mark.slow
def test_the_wheel_leaves_spark_to_the_cluster(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(z.read(meta))
        (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(entry).decode()
    requires = metadata.get_all("Requires-Dist")
    spark = [r for r in requires if r.split(";")[0].strip().startswith(("pyspark", "delta-spark"))]
    # Spark only under an extra: `spark` (a laptop) or `connect` (a Spark Connect client)
    extras = ('extra == "spark"', 'extra == "connect"')
    assert spark and all(any(e in r for e in extras) for r in spark), spark
    assert any("pyspark[connect]" in r for r in spark), spark
    assert {"pydantic", "scipy", "numpy"} <= {r.split(">")[0].split("<")[0] for r in requires}
    assert {"spark", "connect"} <= set(metadata.get_all("Provides-Extra"))
    assert "cluster-spark = cluster_spark.cli:main" in entry_points
    modules = {
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules <= set(names), sorted(modules - set(names))


@pytest.mark.slow
def test_an_installed_wheel_imports_and_runs_its_cli(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import cluster_spark, cluster_spark.cli as cli, sys;"
        "print(cluster_spark.__file__);"
        "sys.exit(cli.main(['run', '--config', 'missing.yaml', '--date', '2026-02-01']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.stdout.startswith(str(target)), proc.stdout + proc.stderr
    assert proc.returncode == 78, proc.stderr  # a config error, before any Spark work
    assert "missing.yaml: config file not found" in proc.stderr
