"""`cluster-spark` command line: stage, reduce, run, show and demo.

Config is loaded and validated before a SparkSession is built. Under spark-submit the
master comes from spark-submit; otherwise `--master` (default local[*]) is used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster_spark.config import load_config
from cluster_spark.errors import EXIT_USAGE, ClusterSparkError


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--date {text!r} is not an ISO date (YYYY-MM-DD)"
        ) from None


class _Parser(argparse.ArgumentParser):
    """argparse with the usage-error exit code of sysexits.h (64), apart from config (78),
    input (66) and data-quality (65) errors."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cluster-spark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("stage", "stage per-group sufficient statistics into the staging Delta table"),
        ("reduce", "compute delta-method results from the staged statistics"),
        ("run", "stage, then reduce"),
        ("show", "print the results table of one analysis date"),
        ("plan", "minimum detectable effects from staged pre-period statistics"),
        ("report", "write a self-contained HTML report per experiment"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", required=True, type=Path, help="YAML config")
        p.add_argument("--date", required=True, type=_date, help="analysis date (YYYY-MM-DD)")
        p.add_argument("--experiment", action="append", help="experiment id (repeatable)")
        p.add_argument("--root", type=Path, help="base of relative table paths (default: cwd)")
        p.add_argument("--master", default="local[*]", help="master outside spark-submit")
        if name == "report":
            p.add_argument("--out", type=Path, default=Path("out/reports"), help="directory")
        if name == "plan":
            p.add_argument(
                "--units",
                type=int,
                action="append",
                default=[],
                help="planned assignment units per group (repeatable)",
            )
    demo = sub.add_parser("demo", help="generate a synthetic cluster experiment and analyse it")
    demo.add_argument("--config", type=Path, default=Path("conf/demo.yaml"))
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--orgs", type=int, default=8000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--master", default="local[*]")
    return parser


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "—" if x is None else format(x, spec)


def _cuped_cell(r: Mapping[str, Any]) -> str:
    """The variance reduction when CUPED was applied, else what happened instead."""
    if r.get("cuped_applied"):
        return _fmt(r["variance_reduction"], ".0%")
    status = r.get("cuped_status")
    return "" if status in (None, "not_compared") else status.removeprefix("fallback_")


def print_results(rows: Iterable[Mapping[str, Any]], console: Console | None = None) -> None:
    """A readable results table: one line per metric and variant."""
    table = Table(show_lines=False)
    for col in (
        "experiment",
        "metric",
        "variant",
        "units",
        "mean",
        "Δ abs",
        "Δ rel [CI]",
        "p",
        "CUPED var↓",
        "SRM p",
        "status",
    ):
        table.add_column(
            col, justify="left" if col in ("experiment", "metric", "variant", "status") else "right"
        )
    for r in rows:
        rel = (
            ""
            if r["effect_rel"] is None
            else (
                f"{r['effect_rel']:+.2%} [{_fmt(r['effect_rel_ci_low'], '+.2%')}, "
                f"{_fmt(r['effect_rel_ci_high'], '+.2%')}]"
            )
        )
        table.add_row(
            r["experiment_id"],
            r["metric"],
            r["variant"],
            str(r["n_units"]),
            _fmt(r["mean"]),
            "" if r["effect_abs"] is None else _fmt(r["effect_abs"], "+.4g"),
            rel,
            "" if r["p_value"] is None else _fmt(r["p_value"], ".3g"),
            _cuped_cell(r),
            "" if r.get("srm_p_value") is None else _fmt(r["srm_p_value"], ".3g"),
            r["status"],
        )
    (console or Console(width=170)).print(table)


def write_experiment_report(spark, config, experiment_id: str, date: dt.date, out: Path) -> Path:
    """Read one experiment's results and diagnostics slices and write its HTML report."""
    from cluster_spark import io, report

    def rows(path: str) -> list[dict[str, Any]]:
        return [r.asDict() for r in io.read_slice(spark, path, [experiment_id], date).collect()]

    return report.write_report(
        out / f"{experiment_id}_{date.isoformat()}.html",
        experiment_id,
        date,
        rows(config.output.results),
        rows(config.output.diagnostics),
    )


def _print_plan(spark, config, args: argparse.Namespace) -> None:
    from cluster_spark import io, reducer

    for exp_id in args.experiment or [e.id for e in config.experiments]:
        staged = io.read_slice(spark, config.output.staging, [exp_id], args.date).collect()
        rows = reducer.plan_experiment(
            [r.asDict() for r in staged], config.experiment(exp_id), args.units
        )
        table = Table(title=f"{exp_id}: relative MDE (alpha, power from config)")
        keys = list(rows[0]) if rows else ["metric"]
        for key in keys:
            table.add_column(key, justify="left" if key == "metric" else "right")
        for row in rows:
            table.add_row(
                *[
                    v
                    if isinstance(v, str)
                    else (_fmt(v, ".2%") if k.startswith("mde") else _fmt(v))
                    for k, v in row.items()
                ]
            )
        Console(width=170).print(table)


def _run_demo(args: argparse.Namespace) -> int:
    from cluster_spark import demo, pipeline
    from cluster_spark.session import build_spark

    console = Console(width=170)
    config = load_config(args.config, root=args.out)
    for table in ("data", "staging", "results", "diagnostics"):  # the demo starts afresh
        shutil.rmtree(args.out / table, ignore_errors=True)
    t0 = time.perf_counter()
    spark = build_spark("cluster_spark demo", local_master=args.master)
    spark.sparkContext.setLogLevel("ERROR")
    n_exp, n_ev = demo.write_demo_data(spark, args.out, n_orgs=args.orgs, seed=args.seed)
    console.print(f"generated {n_exp:,} exposure rows and {n_ev:,} events under {args.out}/data")
    rows = pipeline.run(spark, config, demo.ANALYSIS_DATE)
    print_results(rows, console)
    page = write_experiment_report(spark, config, demo.EXPERIMENT_ID, demo.ANALYSIS_DATE, args.out)
    lifts = ", ".join(f"{v} {lift:+.0%}" for v, lift in demo.LIFT.items() if v != "control")
    console.print(f"true lift in revenue_per_user: {lifts}")
    console.print(
        f"Delta tables: {config.output.staging}, {config.output.results}, "
        f"{config.output.diagnostics}; report: {page} ({time.perf_counter() - t0:.1f}s)"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config, root=args.root)  # validated before Spark starts
    from cluster_spark import io
    from cluster_spark.session import build_spark

    spark = build_spark(f"cluster_spark {args.command}", local_master=args.master)
    with io.input_errors(config.tables()):
        return _command(spark, config, args)


def _command(spark, config, args: argparse.Namespace) -> int:
    from cluster_spark import io, pipeline

    ids = args.experiment
    if args.command == "stage":
        run_id = pipeline.stage(spark, config, args.date, ids)
        print(f"staged run {run_id} into {config.output.staging}")
    elif args.command == "reduce":
        print_results(pipeline.reduce(spark, config, args.date, ids))
    elif args.command == "run":
        print_results(pipeline.run(spark, config, args.date, ids))
    elif args.command == "plan":
        _print_plan(spark, config, args)
    elif args.command == "report":
        for exp_id in ids or [e.id for e in config.experiments]:
            print(f"wrote {write_experiment_report(spark, config, exp_id, args.date, args.out)}")
    else:
        ids = ids or [e.id for e in config.experiments]
        df = io.read_slice(spark, config.output.results, ids, args.date)
        print_results(r.asDict() for r in df.orderBy("experiment_id", "metric").collect())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run_demo(args) if args.command == "demo" else _run(args)
    except ClusterSparkError as err:
        print(f"cluster-spark: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
