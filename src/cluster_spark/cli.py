"""`cluster-spark` command line: stage, reduce, run, show, plan, report, demo and serve.

Config and analysis date are validated before a SparkSession is built. Under spark-submit
the master comes from spark-submit; otherwise `--master` (default local[*]), and a local
session the CLI starts gets laptop-sized settings (`session.LOCAL_CONF`), and more for
tables of a few MiB (`session.SMALL_INPUT_CONF`, `_input_bytes`); or `--remote
sc://HOST:PORT` (default: $SPARK_REMOTE) makes it a Spark Connect client. `--conf KEY=VALUE`
adds Spark settings (they win over those); `-q` prints only results, warnings and errors.
Progress, notes and warnings go to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster_spark import checks
from cluster_spark.config import Config, load_config
from cluster_spark.errors import EXIT_USAGE, ClusterSparkError, UsageError

#: `cluster-spark demo`'s config, relative to the checkout it runs in.
DEMO_CONFIG = Path("conf/demo.yaml")

#: Spark settings of `-q`: only errors in Spark's log, no progress bars.
QUIET_CONF = {"spark.log.level": "ERROR", "spark.ui.showConsoleProgress": "false"}

#: Log4j 2 settings of a driver JVM that `-q` starts: errors only from the first line (the
#: `spark.log.level` above applies once the SparkContext is up, after the start-up WARNs).
#: A configured `org` logger at the root's level keeps Spark from announcing a shell log
#: level (it does when the first logging class has no logger of its own).
QUIET_LOG4J = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
logger.org.name = org
logger.org.level = error
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--date {text!r} is not an ISO date (YYYY-MM-DD)"
        ) from None


def _conf(text: str) -> tuple[str, str]:
    """`--conf KEY=VALUE`: a Spark setting (the key starts with `spark.`; the value may be
    empty and may hold `=`)."""
    key, eq, value = text.partition("=")
    if not eq or not key.startswith("spark.") or key != key.strip() or " " in key:
        raise argparse.ArgumentTypeError(
            f"--conf {text!r} is not KEY=VALUE with a Spark key (spark.…), "
            "e.g. --conf spark.sql.shuffle.partitions=4"
        )
    return key, value


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
        _session_arguments(p)
        p.add_argument(
            "--conf",
            type=_conf,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Spark setting (repeatable), e.g. spark.sql.shuffle.partitions=4",
        )
        p.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            help="no progress; Spark logs errors only (results, warnings and errors still shown)",
        )
        if name in ("stage", "run"):
            p.add_argument(
                "--full-refresh",
                action="store_true",
                help="with `incremental` in the config: read every event and rebuild the state",
            )
        if name == "run":
            p.add_argument(
                "--report",
                type=Path,
                metavar="PATH",
                help="also write the HTML report: PATH.html (one experiment) or a directory "
                "(<experiment>_<date>.html each)",
            )
        if name == "report":
            p.add_argument(
                "--out",
                type=Path,
                default=Path("out/reports"),
                help="directory (<experiment>_<date>.html each), or PATH.html for one experiment",
            )
        if name == "show":
            p.add_argument(
                "--dimension",
                metavar="NAME",
                help="the slices of this dimension instead of the overall results",
            )
        if name == "plan":
            p.add_argument(
                "--units",
                type=int,
                action="append",
                default=[],
                help="planned assignment units per group (repeatable)",
            )
    serve = sub.add_parser(
        "serve",
        help="a warm local Spark Connect server with Delta for repeated runs (--remote)",
    )
    serve.add_argument("--port", type=int, default=15002)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: this machine only; a Connect server runs any "
        "code a client sends, with no login)",
    )
    serve.add_argument("--master", default="local[*]", help="the server's master")
    serve.add_argument("--warehouse", type=Path, help="spark.sql.warehouse.dir (catalog tables)")
    serve.add_argument("--log", type=Path, default=Path("out/connect-server.log"))
    serve.add_argument("--conf", type=_conf, action="append", default=[], metavar="KEY=VALUE")
    demo = sub.add_parser("demo", help="generate a synthetic cluster experiment and analyse it")
    demo.add_argument("--config", type=Path, default=DEMO_CONFIG)
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--orgs", type=int, default=8000)
    demo.add_argument("--seed", type=int, default=7)
    _session_arguments(demo)
    demo.add_argument("--conf", type=_conf, action="append", default=[], metavar="KEY=VALUE")
    return parser


def _session_arguments(p: argparse.ArgumentParser) -> None:
    """--master and --remote: a classic session or a Spark Connect one, not both."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--master", help="master outside spark-submit (default: local[*])")
    where.add_argument(
        "--remote",
        default=os.environ.get("SPARK_REMOTE"),
        metavar="sc://HOST:PORT",
        help="a Spark Connect server (default: $SPARK_REMOTE); the server brings Delta",
    )


def _fmt(x: float | None, spec: str = ".4g") -> str:
    if x is None:
        return "—"
    if x in (math.inf, -math.inf):  # the open end of a one-sided interval
        return "+∞" if x > 0 else "−∞"
    return format(x, spec)


def _cuped_cell(r: Mapping[str, Any]) -> str:
    """The variance reduction when CUPED was applied, else what happened instead."""
    if r.get("cuped_applied"):
        return _fmt(r["variance_reduction"], ".0%")
    status = r.get("cuped_status")
    return "" if status in (None, "not_compared") else status.removeprefix("fallback_")


def print_results(
    rows: Iterable[Mapping[str, Any]], console: Console | None = None, dimension: str | None = None
) -> None:
    """A readable results table: one line per metric and variant of the overall rows
    (control first), or with `dimension`, per slice of that dimension (with the
    heterogeneity p-value). CUPED-adjusted effects are marked `*`."""
    rows = [r for r in rows if r.get("dimension") == dimension]
    sliced = dimension is not None
    decided = any(r.get("decision") for r in rows)
    table = Table(show_lines=False)
    for col in (
        "experiment",
        *(["slice"] if sliced else []),
        "metric",
        "variant",
        "units",
        "mean",
        "Δ abs",
        "Δ rel [CI]",
        "p",
        "CUPED var↓",
        "SRM p",
        *(["het. p"] if sliced else []),
        *(["decision"] if decided else []),
        "status",
    ):
        left = ("experiment", "slice", "metric", "variant", "decision", "status")
        table.add_column(col, justify="left" if col in left else "right")
    adjusted = False
    for r in rows:
        mark = "*" if r.get("cuped_applied") else ""
        adjusted = adjusted or bool(mark)
        rel = (
            ""
            if r["effect_rel"] is None
            else (
                f"{r['effect_rel']:+.2%}{mark} [{_fmt(r['effect_rel_ci_low'], '+.2%')}, "
                f"{_fmt(r['effect_rel_ci_high'], '+.2%')}]"
            )
        )
        table.add_row(
            r["experiment_id"],
            *([r["slice"]] if sliced else []),
            r["metric"],
            r["variant"],
            str(r["n_units"]),
            _fmt(r["mean"]),
            "" if r["effect_abs"] is None else _fmt(r["effect_abs"], "+.4g") + mark,
            rel,
            "" if r["p_value"] is None else _fmt(r["p_value"], ".3g"),
            _cuped_cell(r),
            "" if r.get("srm_p_value") is None else _fmt(r["srm_p_value"], ".3g"),
            *([_fmt(r.get("heterogeneity_p_value"), ".3g")] if sliced else []),
            *([r.get("decision") or ""] if decided else []),
            r["status"],
        )
    if adjusted:
        table.caption = "* CUPED-adjusted effect (the mean column is unadjusted)"
    (console or Console(width=190)).print(table)


def health_lines(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per experiment with its health verdict and reason codes."""
    seen: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        if r.get("dimension") is None and r.get("health") is not None:
            seen.setdefault(r["experiment_id"], r)
    return [
        f"{e}: {r['health']}"
        + (f" ({', '.join(r['health_reasons'])})" if r["health_reasons"] else "")
        for e, r in seen.items()
    ]


def recommendation_lines(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per experiment and treatment: its recommendation and the reasons
    (`stats.recommend`), e.g. 'e1 treatment: ship (goal revenue win: …)'."""
    seen: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in rows:
        if r.get("dimension") is None and r.get("recommendation") is not None:
            seen.setdefault((r["experiment_id"], r["variant"]), r)
    return [
        f"{e} {v}: {r['recommendation']}"
        + (f" ({'; '.join(r['recommendation_reasons'])})" if r["recommendation_reasons"] else "")
        for (e, v), r in seen.items()
    ]


def _print_recommendations(
    rows: Iterable[Mapping[str, Any]], console: Console | None = None
) -> None:
    """Printed before the results table: the first thing a reader sees."""
    for line in recommendation_lines(rows):
        (console or Console(width=190)).print(
            f"recommendation {line}", highlight=False, markup=False, soft_wrap=True
        )


def _print_health(rows: Iterable[Mapping[str, Any]], console: Console | None = None) -> None:
    for line in health_lines(rows):
        (console or Console(width=190)).print(f"health {line}", highlight=False)


def _slice_notes(rows: Iterable[Mapping[str, Any]], args: argparse.Namespace) -> list[str]:
    """Where the slice rows the overall table leaves out are: a `show` command per
    dimension that runs as printed (the same config, root, date, experiments and Spark
    options)."""
    counts: dict[str, set[str]] = {}
    for r in rows:
        if r.get("dimension") is not None:
            counts.setdefault(r["dimension"], set()).add(r["slice"])
    if not counts:
        return []
    base = ["cluster-spark", "show", "--config", str(args.config)]
    if args.root is not None:
        base += ["--root", str(args.root)]
    base += ["--date", args.date.isoformat()]
    for e in args.experiment or []:
        base += ["--experiment", e]
    for option in ("master", "remote"):
        if getattr(args, option, None):
            base += [f"--{option}", getattr(args, option)]
    for key, value in getattr(args, "conf", None) or []:
        base += ["--conf", f"{key}={value}"]
    return [
        f"results by {d} ({len(s)} slices): {shlex.join([*base, '--dimension', d])}"
        for d, s in sorted(counts.items())
    ]


def _report_paths(
    target: Path, ids: Sequence[str], date: dt.date, option: str = "--report"
) -> dict[str, Path]:
    """Where each experiment's report goes: `target` itself when it names an .html file
    (one experiment only: a usage error otherwise), else `<target>/<id>_<date>.html`."""
    if target.suffix.lower() in (".html", ".htm"):
        if len(ids) != 1:
            raise UsageError(
                f"{option} {target}: one file for {len(ids)} experiments "
                f"({', '.join(ids)}); give a directory, or one --experiment"
            )
        return {ids[0]: target}
    return {e: target / f"{e}_{date.isoformat()}.html" for e in ids}


def write_experiment_report(spark, config, experiment_id: str, date: dt.date, out: Path) -> Path:
    """Read one experiment's results and diagnostics slices and write its HTML report."""
    from cluster_spark import api
    from cluster_spark.reporting import write_report

    (found,), _ = api.read_reported(spark, config, date, [experiment_id])
    path = _report_paths(out, [experiment_id], date)[experiment_id]
    return write_report(path, experiment_id, date, *found.report_args[1:])


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


class _Progress:
    """Progress lines on stderr with the time since the command started (none with -q);
    warnings and notes are shown in every mode."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.t0 = quiet, time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.t0
            print(f"cluster-spark: {message} ({elapsed:.1f}s)", file=sys.stderr, flush=True)

    @staticmethod
    def warn(messages: Iterable[str], kind: str = "warning") -> None:
        for message in messages:
            print(f"cluster-spark: {kind}: {message}", file=sys.stderr, flush=True)


def _quiet_log4j() -> Path:
    """QUIET_LOG4J as a file (in the temporary directory, replaced atomically)."""
    path = Path(tempfile.gettempdir()) / "cluster_spark-quiet-log4j2.properties"
    if not path.exists() or path.read_text() != QUIET_LOG4J:
        part = path.with_name(f"{path.name}.{os.getpid()}")
        part.write_text(QUIET_LOG4J)
        part.replace(path)
    return path


def _spark_conf(args: argparse.Namespace) -> dict[str, str]:
    """Spark settings from the command line: -q's, then every --conf (the last one wins).
    -q also points a driver JVM it starts at QUIET_LOG4J (not under spark-submit, whose
    JVM runs already; not when --conf sets the driver's Java options itself). Under Spark
    Connect only the --conf settings are sent: the server's logs are the server's."""
    conf = {}
    if args.remote:
        return dict(args.conf)
    if getattr(args, "quiet", False):
        conf |= QUIET_CONF
        if "PYSPARK_GATEWAY_PORT" not in os.environ:
            java = f"-Dlog4j2.configurationFile={_quiet_log4j().as_uri()}"
            conf["spark.driver.extraJavaOptions"] = java
    return conf | dict(args.conf)


def _input_bytes(args: argparse.Namespace, config: Config) -> int | None:
    """Size of the tables the command reads (`session.local_bytes`), when the CLI starts a
    local session or uses a Connect server on this machine: the chosen experiments' inputs
    for stage and run; the staging table for plan, staging and diagnostics for reduce,
    results for show, results and diagnostics for report (group-level rows; one not written
    yet counts as empty)."""
    from cluster_spark.session import (
        SMALL_INPUT_BYTES,
        local_bytes,
        local_master_here,
        local_server,
    )

    if args.remote and not local_server(args.remote):
        return None
    if not args.remote and not local_master_here(args.master or "local[*]"):
        return None
    if args.command in ("stage", "run"):
        from cluster_spark.inputs import needs

        ids = args.experiment or [e.id for e in config.experiments]
        paths = [need.table.path for need in needs(config, ids).values()]
        return local_bytes(paths, SMALL_INPUT_BYTES)
    out = config.output
    reads = {
        "plan": [out.staging],
        "reduce": [out.staging, out.diagnostics],
        "show": [out.results],
        "report": [out.results, out.diagnostics],
    }[args.command]
    return local_bytes([t.path for t in reads], SMALL_INPUT_BYTES, absent_empty=True)


def _start_spark(
    args: argparse.Namespace,
    app_name: str,
    extra_conf: dict[str, str],
    input_bytes: int | None = None,
):
    """build_spark (small-input settings for a local session when `input_bytes` is small);
    a session that does not start with the --conf settings given is a usage error naming
    them and Spark's reason (no Java traceback)."""
    from cluster_spark.session import build_spark

    if args.master and args.remote:
        raise UsageError(
            f"--master {args.master} and a Spark Connect server ({args.remote}, from --remote "
            "or SPARK_REMOTE) were both given: choose one"
        )
    try:
        return build_spark(
            app_name,
            local_master=args.master or "local[*]",
            extra_conf=extra_conf,
            remote=args.remote,
            input_bytes=input_bytes,
        )
    except ClusterSparkError:
        raise
    except Exception as err:
        if not args.conf:
            raise
        reason = next(
            (line[2:] for line in str(err).splitlines() if line.startswith(": ")),
            str(err).splitlines()[0] if str(err) else type(err).__name__,
        )
        given = ", ".join(f"{k}={v}" for k, v in args.conf)
        raise UsageError(f"Spark did not start with --conf {given}: {reason}") from None


def _run_demo(args: argparse.Namespace) -> int:
    from cluster_spark import demo, pipeline

    console = Console(width=200)
    if args.config == DEMO_CONFIG and not DEMO_CONFIG.exists():
        raise UsageError(
            f"cluster-spark demo reads {DEMO_CONFIG} of the cluster_spark checkout: run it "
            "from the checkout's directory, or give that file with --config"
        )
    config = load_config(args.config, root=args.out)
    for table in ("data", "staging", "results", "diagnostics"):  # the demo starts afresh
        shutil.rmtree(args.out / table, ignore_errors=True)
    if config.incremental is not None and config.incremental.state.path is not None:
        shutil.rmtree(config.incremental.state.path, ignore_errors=True)  # its state too
    # New data every time: each date is analysed from every event (equal to the incremental
    # daily job's results, and faster on the demo's few events); `run` keeps the state.
    config = config.model_copy(update={"incremental": None})
    t0 = time.perf_counter()
    quiet = {} if args.remote else {"spark.log.level": "ERROR"}
    spark = _start_spark(args, "cluster_spark demo", {**quiet, **_spark_conf(args)})
    n_exp, n_ev = demo.write_demo_data(spark, args.out, n_orgs=args.orgs, seed=args.seed)
    console.print(f"generated {n_exp:,} exposure rows and {n_ev:,} events under {args.out}/data")
    for date in demo.EARLIER_DATES:  # the daily job's earlier runs: the report's timeline
        pipeline.run_outcome(spark, config, date)
        console.print(f"analysed {date}")
    outcome = pipeline.run_outcome(spark, config, demo.ANALYSIS_DATE)
    _print_recommendations(outcome.results, console)
    print_results(outcome.results, console)
    _print_health(outcome.results, console)
    _Progress.warn(outcome.warnings(config))
    page = write_experiment_report(spark, config, demo.EXPERIMENT_ID, demo.ANALYSIS_DATE, args.out)
    lifts = ", ".join(f"{v} {lift:+.0%}" for v, lift in demo.LIFT.items() if v != "control")
    console.print(f"true lift in revenue_per_user: {lifts}")
    console.print(
        f"Delta tables: {config.output.staging}, {config.output.results}, "
        f"{config.output.diagnostics}; report: {page} ({time.perf_counter() - t0:.1f}s)"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    """Validate config, experiments, date and --report before Spark starts; then run."""
    progress = _Progress(args.quiet)
    config = load_config(args.config, root=args.root)
    ids = args.experiment or [e.id for e in config.experiments]
    for e in ids:
        config.experiment(e)  # ConfigError naming an unknown id
    notes = checks.date_notes(config, ids, args.date)  # UsageError before the start
    if getattr(args, "full_refresh", False) and config.incremental is None:
        raise UsageError(
            f"--full-refresh: {args.config} has no `incremental` section, so every run "
            "already reads every event"
        )
    option = "--out" if args.command == "report" else "--report"
    target = getattr(args, option.removeprefix("--"), None)
    if target is not None:
        _report_paths(target, ids, args.date, option)  # one .html for several: UsageError
    _Progress.warn(notes, "note")
    from cluster_spark import io

    progress(f"starting Spark for {args.command} of {', '.join(ids)} on {args.date}")
    size = _input_bytes(args, config)
    spark = _start_spark(args, f"cluster_spark {args.command}", _spark_conf(args), size)
    with io.input_errors(config.tables()):
        code = _command(spark, config, args, progress)
    progress("done")
    return code


def _write_reports(spark, outcome, config, args: argparse.Namespace) -> None:
    """`run --report`: the reports of this run's rows, with the timeline of earlier dates
    read from the results table."""
    from cluster_spark import api
    from cluster_spark.reporting import write_report

    ids = args.experiment or [e.id for e in config.experiments]
    history = api.read_history(spark, config, args.date, ids)
    for exp_id, path in _report_paths(args.report, ids, args.date).items():
        rows = [r for r in outcome.results if r["experiment_id"] == exp_id]
        diags = [d for d in outcome.diagnostics if d["experiment_id"] == exp_id]
        past = [h for h in history if h["experiment_id"] == exp_id]
        described = api.descriptions(config, exp_id)
        page = write_report(path, exp_id, args.date, rows, diags, past, described)
        print(f"wrote {page}")


def _command(spark, config, args: argparse.Namespace, progress: _Progress) -> int:
    from cluster_spark import api, pipeline
    from cluster_spark.reporting import result_order, write_report

    ids = args.experiment
    if args.command == "stage":
        progress("staging")
        outcome = pipeline.stage_outcome(
            spark, config, args.date, ids, full_refresh=args.full_refresh
        )
        print(f"staged run {outcome.run_id} into {config.output.staging}")
        _Progress.warn(outcome.warnings(config))
    elif args.command == "reduce":
        progress("reducing")
        results = pipeline.reduce(spark, config, args.date, ids)
        _print_recommendations(results)
        print_results(results)
        _print_health(results)
        _Progress.warn(_slice_notes(results, args), kind="note")
    elif args.command == "run":
        progress("staging and reducing")
        outcome = pipeline.run_outcome(spark, config, args.date, ids, args.full_refresh)
        _print_recommendations(outcome.results)
        print_results(outcome.results)
        _print_health(outcome.results)
        _Progress.warn(_slice_notes(outcome.results, args), kind="note")
        if args.report is not None:
            _write_reports(spark, outcome, config, args)
        _Progress.warn(outcome.warnings(config))
    elif args.command == "plan":
        _print_plan(spark, config, args)
    elif args.command == "report":
        progress("reading results and diagnostics")
        reported, missing = api.read_reported(spark, config, args.date, ids)
        paths = _report_paths(args.out, [r.experiment_id for r in reported], args.date, "--out")
        for r in reported:
            page = write_report(
                paths[r.experiment_id], r.experiment_id, args.date, *r.report_args[1:]
            )
            print(f"wrote {page}")
        _Progress.warn(f"no results for experiment '{e}' on {args.date}" for e in missing)
        _Progress.warn(checks.warnings(config, [d for r in reported for d in r.diagnostics]))
    else:
        reported, missing = api.read_reported(spark, config, args.date, ids, diagnostics=False)
        rows = [row for r in reported for row in r.results]
        dims = sorted({r["dimension"] for r in rows if r.get("dimension") is not None})
        if args.dimension is not None and args.dimension not in dims:
            raise UsageError(
                f"--dimension {args.dimension!r}: the results of {args.date} have "
                + (f"the dimensions {dims}" if dims else "no dimensions (no experiment lists any)")
            )
        _print_recommendations(rows)
        print_results(sorted(rows, key=result_order), dimension=args.dimension)
        _print_health(rows)
        _Progress.warn(f"no results for experiment '{e}' on {args.date}" for e in missing)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            from cluster_spark.serve import serve

            return serve(
                args.port, args.log, args.warehouse, args.master, dict(args.conf), args.host
            )
        return _run_demo(args) if args.command == "demo" else _run(args)
    except ClusterSparkError as err:
        print(f"cluster-spark: error: {err}", file=sys.stderr)
        for note in getattr(err, "__notes__", []):  # e.g. an undo that failed too
            print(f"cluster-spark: error: {note}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
