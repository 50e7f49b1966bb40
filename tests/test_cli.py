"""Issue #15 items 7 and 8: what the command line says about the analysis date, and how it
starts Spark (`--conf`, `-q`, local defaults) and writes the report after a run.

In-process tests replace `build_spark` by one that records its arguments and returns the
test session (so no setting reaches the shared session); one subprocess test runs the
`cluster-spark` entry point as a user would, in its own JVM."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_spark import cli, pipeline, session
from cluster_spark.config import parse_config
from cluster_spark.errors import UsageError
from tests.helpers import EVENT_DDL, EXPOSURE_DDL, config_dict, write_delta
from tests.test_staging import EVENTS, EXPOSURES

CLI = Path(sys.executable).with_name("cluster-spark")


@pytest.fixture(scope="module")
def inputs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_inputs")
    write_delta(spark, EXPOSURES, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, root / "events")
    return root


def _config_file(inputs: Path, out: Path, **experiment) -> Path:
    raw = config_dict(inputs)
    raw["experiments"][0].update(experiment)
    raw["output"] = {k: str(out / k) for k in ("staging", "results", "diagnostics")}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "conf.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


@pytest.fixture()
def started(spark, monkeypatch):
    """Calls of build_spark by the CLI, as (app name, local master, extra conf, input
    bytes)."""
    calls = []

    def fake(
        app_name="cluster_spark", local_master=None, extra_conf=None, remote=None, input_bytes=None
    ):
        assert remote is None  # no --remote, no SPARK_REMOTE in these tests
        calls.append((app_name, local_master, dict(extra_conf or {}), input_bytes))
        return spark

    monkeypatch.setattr(session, "build_spark", fake)
    return calls


# ---------------------------------------------------------------- item 7: the date


def test_a_date_before_the_start_is_a_usage_error_before_spark(inputs, tmp_path, started, capsys):
    conf = _config_file(inputs, tmp_path)
    for command in ("run", "stage", "reduce", "show", "report", "plan"):
        code = cli.main([command, "--config", str(conf), "--date", "2026-03-01"])
        assert code == 64, command
        err = capsys.readouterr().err
        assert err == (
            "cluster-spark: error: analysis date 2026-03-01 is before the start of the "
            "experiment ('e1' starts on 2026-03-02): no unit can be exposed yet, so there is "
            "nothing to analyse; choose a date on or after the start\n"
        ), command
    assert started == []  # Spark never started


def test_the_library_refuses_a_date_before_the_start_too(spark, inputs, tmp_path):
    config = parse_config(config_dict(inputs))
    with pytest.raises(UsageError, match=r"2026-03-01 is before the start .*'e1' starts on"):
        pipeline.run(spark, config, dt.date(2026, 3, 1))
    assert not Path(config.output.results.path).exists()


def test_one_early_experiment_of_several_is_named(inputs, tmp_path, started, capsys):
    raw = config_dict(inputs)
    later = {**raw["experiments"][0], "id": "later", "start": "2026-03-20"}
    raw["experiments"].append(later)
    path = tmp_path / "two.yaml"
    path.write_text(json.dumps(raw))
    assert cli.main(["stage", "--config", str(path), "--date", "2026-03-09"]) == 64
    err = capsys.readouterr().err
    assert "('later' starts on 2026-03-20)" in err
    assert err.endswith("or leave that experiment out (--experiment)\n")
    assert started == []


def test_a_date_after_the_end_is_capped_with_a_note(spark, inputs, tmp_path, started, capsys):
    """end 2026-03-05: events up to 03-06 00:00 UTC. Control o1, o2: 10 + 7 over 2 + 1
    users; treatment o3, o4, o6: 20 (o3's 1.0 on 03-10 is cut) over 3 + 1 + 0 users."""
    conf = _config_file(inputs, tmp_path, end="2026-03-05")
    assert cli.main(["run", "--config", str(conf), "--date", "2026-03-09"]) == 0
    out, err = capsys.readouterr()
    assert (
        "cluster-spark: note: experiment 'e1' ended on 2026-03-05: the analysis for "
        "2026-03-09 is capped at the end date (events and exposures up to 2026-03-05 "
        "24:00 UTC)\n"
    ) in err
    assert "warning" not in err
    config = parse_config(json.loads(conf.read_text()))
    rows = {
        (r.metric, r.variant): r
        for r in pipeline.io.read_slice(
            spark, config.output.results.path, ["e1"], dt.date(2026, 3, 9)
        ).collect()
    }
    assert rows[("revenue_per_user", "control")].mean == pytest.approx(17 / 3)
    assert rows[("revenue_per_user", "treatment")].mean == pytest.approx(20 / 4)
    assert "revenue_per_user" in out


def test_show_and_report_of_a_date_never_run_say_so(inputs, tmp_path, started, capsys):
    conf = _config_file(inputs, tmp_path)
    assert cli.main(["run", "-q", "--config", str(conf), "--date", "2026-03-09"]) == 0
    capsys.readouterr()
    for command in ("show", "report"):
        assert cli.main([command, "--config", str(conf), "--date", "2026-03-08"]) == 66
        err = capsys.readouterr().err
        assert (
            f"cluster-spark: error: no results for experiment 'e1' on 2026-03-08 in "
            f"{tmp_path}/results: run the analysis for that date first"
        ) in err, command


def test_show_of_a_dimension_the_results_do_not_have_is_a_usage_error(
    inputs, tmp_path, started, capsys
):
    conf = _config_file(inputs, tmp_path)
    assert cli.main(["run", "-q", "--config", str(conf), "--date", "2026-03-09"]) == 0
    assert "results by" not in capsys.readouterr().err  # no slices: no note
    args = ["show", "--config", str(conf), "--date", "2026-03-09", "--dimension", "plan"]
    assert cli.main(args) == 64
    assert (
        "cluster-spark: error: --dimension 'plan': the results of 2026-03-09 have no "
        "dimensions (no experiment lists any)"
    ) in capsys.readouterr().err


def test_demo_outside_the_checkout_says_where_its_config_is(tmp_path, monkeypatch, started, capsys):
    """`cluster-spark demo` reads conf/demo.yaml relative to where it runs: elsewhere it
    says so (exit 64) before any Spark work, instead of a bare "config file not found"."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--orgs", "10"]) == 64
    err = capsys.readouterr().err
    assert "reads conf/demo.yaml of the cluster_spark checkout" in err and "--config" in err
    assert started == [] and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- item 8: Spark settings


@pytest.mark.parametrize(
    "bad", ["spark.sql.shuffle.partitions", "shuffle.partitions=4", "=4", "spark. x=1"]
)
def test_a_malformed_conf_is_a_usage_error_naming_it(bad, capsys):
    with pytest.raises(SystemExit) as usage:
        cli.main(["run", "--config", "x.yaml", "--date", "2026-03-09", "--conf", bad])
    assert usage.value.code == 64
    err = capsys.readouterr().err
    assert f"argument --conf: --conf {bad!r} is not KEY=VALUE with a Spark key" in err


def test_run_show_report_start_a_local_session_with_the_given_conf(
    inputs, tmp_path, started, capsys
):
    conf = _config_file(inputs, tmp_path)
    common = ["--config", str(conf), "--date", "2026-03-09"]
    extra = ["--conf", "spark.sql.shuffle.partitions=3", "--conf", "spark.x.y=a=b"]
    assert cli.main(["run", *common, *extra, "-q"]) == 0
    assert cli.main(["show", *common, *extra]) == 0
    assert cli.main(["report", *common, *extra, "--out", str(tmp_path / "reports")]) == 0
    # local[*]: build_spark adds session.LOCAL_CONF to a local session it starts itself
    assert [(name, master) for name, master, _, _ in started] == [
        ("cluster_spark run", "local[*]"),
        ("cluster_spark show", "local[*]"),
        ("cluster_spark report", "local[*]"),
    ]
    given = {"spark.sql.shuffle.partitions": "3", "spark.x.y": "a=b"}
    assert started[1][2] == given and started[2][2] == given
    quiet = started[0][2]  # run -q
    java = quiet.pop("spark.driver.extraJavaOptions")
    assert quiet == {**cli.QUIET_CONF, **given}
    assert cli.QUIET_CONF == {"spark.log.level": "ERROR", "spark.ui.showConsoleProgress": "false"}
    log4j = Path(java.removeprefix("-Dlog4j2.configurationFile=file://"))
    assert "rootLogger.level = error" in log4j.read_text()
    assert (tmp_path / "reports" / "e1_2026-03-09.html").exists()
    assert session.LOCAL_CONF["spark.sql.shuffle.partitions"] == "8"


def _bytes_under(*paths: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(d, f)) for p in paths for d, _, fs in os.walk(p) for f in fs
    )


def test_the_session_is_sized_from_the_tables_the_command_reads(inputs, tmp_path, started):
    """`session.local_bytes` of what each command reads decides the small-input settings:
    the inputs for run and stage; output tables (group-level rows) for the others."""
    conf = _config_file(inputs, tmp_path)
    common = ["--config", str(conf), "--date", "2026-03-09", "-q"]
    out = {k: tmp_path / k for k in ("staging", "results", "diagnostics")}
    assert cli.main(["stage", *common]) == 0  # no results table yet
    assert cli.main(["reduce", *common]) == 0
    assert cli.main(["show", *common]) == 0
    assert cli.main(["plan", *common]) == 0
    sizes = [size for *_, size in started]
    staged = _bytes_under(out["staging"], out["diagnostics"])
    assert sizes[:2] == [_bytes_under(inputs / "exposures", inputs / "events"), staged]
    assert sizes[2:] == [_bytes_under(out["results"]), _bytes_under(out["staging"])]
    assert all(0 < s < session.SMALL_INPUT_BYTES for s in sizes)
    # report before any results: those tables count as empty
    empty = _config_file(inputs, tmp_path / "empty")
    cli.main(["report", "--config", str(empty), "--date", "2026-03-09", "-q"])
    assert started[-1][3] == 0
    # an input named as a catalog table: its size is unknown, so no small-input settings
    raw = json.loads(conf.read_text())
    raw["sources"]["events"] = {**raw["sources"]["events"], "table": "events"}
    del raw["sources"]["events"]["path"]
    conf.write_text(json.dumps(raw))
    cli.main(["run", *common])  # fails: there is no such table
    assert started[-1][3] is None


def test_quiet_prints_results_but_no_progress(inputs, tmp_path, started, capsys):
    conf = _config_file(inputs, tmp_path)
    common = ["--config", str(conf), "--date", "2026-03-09"]
    assert cli.main(["run", *common]) == 0
    out, err = capsys.readouterr()
    assert "revenue_per_user" in out
    assert "cluster-spark: starting Spark for run of e1 on 2026-03-09" in err
    assert "cluster-spark: staging and reducing" in err and "cluster-spark: done" in err
    assert cli.main(["run", "--quiet", *common]) == 0
    out, err = capsys.readouterr()
    assert "revenue_per_user" in out and err == ""


def test_run_report_writes_the_html_of_the_run(inputs, tmp_path, started, capsys):
    conf = _config_file(inputs, tmp_path)
    page = tmp_path / "pages" / "e1.html"
    common = ["run", "-q", "--config", str(conf), "--date", "2026-03-09"]
    assert cli.main([*common, "--report", str(page)]) == 0
    assert capsys.readouterr().out.endswith(f"wrote {page}\n")
    text = page.read_text("utf-8")
    assert "<h1>Experiment e1</h1>" in text
    assert "<td>5.667</td>" in text and "<td>5.25</td>" in text  # 17/3 and 21/4
    assert cli.main([*common, "--report", str(tmp_path / "dir")]) == 0
    assert (tmp_path / "dir" / "e1_2026-03-09.html").exists()
    argv = ["report", "-q", "--config", str(conf), "--date", "2026-03-09"]
    assert cli.main([*argv, "--out", str(tmp_path / "again.html")]) == 0
    last = (tmp_path / "dir" / "e1_2026-03-09.html").read_text("utf-8")  # the last run's
    assert (tmp_path / "again.html").read_text("utf-8") == last  # read back: the same page


def test_one_report_file_for_two_experiments_is_a_usage_error(inputs, tmp_path, started, capsys):
    raw = config_dict(inputs)
    raw["experiments"].append({**raw["experiments"][0], "id": "e2"})
    path = tmp_path / "two.yaml"
    path.write_text(json.dumps(raw))
    for command, option in (("run", "--report"), ("report", "--out")):
        argv = [command, "--config", str(path), "--date", "2026-03-09", option, "r.html"]
        assert cli.main(argv) == 64
        assert capsys.readouterr().err == (
            f"cluster-spark: error: {option} r.html: one file for 2 experiments (e1, e2); "
            "give a directory, or one --experiment\n"
        )
    assert started == []


def test_a_conf_spark_cannot_start_with_is_a_usage_error(monkeypatch, capsys, tmp_path):
    def fails(*args, **kwargs):
        raise RuntimeError(
            "An error occurred while calling None.JavaSparkContext.\n"
            ": java.io.FileNotFoundException: File file:/nope does not exist\n\tat x"
        )

    monkeypatch.setattr(session, "build_spark", fails)
    conf = _config_file(tmp_path, tmp_path / "out")
    argv = ["run", "--config", str(conf), "--date", "2026-03-09", "-q"]
    argv += ["--conf", "spark.eventLog.enabled=true", "--conf", "spark.eventLog.dir=/nope"]
    assert cli.main(argv) == 64
    assert capsys.readouterr().err == (
        "cluster-spark: error: Spark did not start with --conf spark.eventLog.enabled=true, "
        "spark.eventLog.dir=/nope: java.io.FileNotFoundException: File file:/nope does not "
        "exist\n"
    )


def test_master_and_a_connect_server_together_are_a_usage_error(monkeypatch, capsys, tmp_path):
    """--master with SPARK_REMOTE set is ambiguous: a usage error before any session starts;
    --master with --remote is refused by the parser."""
    started = []
    monkeypatch.setattr(session, "build_spark", lambda *a, **k: started.append(k))
    monkeypatch.setenv("SPARK_REMOTE", "sc://spark.example:15002")
    conf = _config_file(tmp_path, tmp_path / "out")
    argv = ["run", "-q", "--config", str(conf), "--date", "2026-03-09", "--master", "local[1]"]
    assert cli.main(argv) == 64
    assert capsys.readouterr().err == (
        "cluster-spark: error: --master local[1] and a Spark Connect server "
        "(sc://spark.example:15002, from --remote or SPARK_REMOTE) were both given: choose one\n"
    )
    with pytest.raises(SystemExit):
        cli.main([*argv, "--remote", "sc://localhost:15002"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert started == []


def test_an_unreachable_connect_server_is_a_usage_error(capsys, tmp_path):
    """Said at once, naming the server (PySpark alone retries for minutes)."""
    conf = _config_file(tmp_path, tmp_path / "out")
    argv = ["run", "--config", str(conf), "--date", "2026-03-09", "-q"]
    assert cli.main([*argv, "--remote", "sc://localhost:1"]) == 64
    assert capsys.readouterr().err == (
        "cluster-spark: error: cannot reach the Spark Connect server localhost:1 "
        "(sc://localhost:1): Connection refused\n"
    )
    assert cli.main([*argv, "--remote", "localhost:15002"]) == 64
    assert "looks like sc://HOST:PORT, not 'localhost:15002'" in capsys.readouterr().err


def test_serve_on_a_taken_port_is_a_usage_error(capsys, tmp_path):
    """`cluster-spark serve` says so at once when the port is taken (another server),
    before starting a JVM."""
    import socket

    with socket.socket() as taken:
        taken.bind(("localhost", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["serve", "--port", str(port), "--log", str(tmp_path / "s.log")])
    assert code == 64
    assert capsys.readouterr().err == (
        f"cluster-spark: error: port {port} is taken (another server?): choose one with --port\n"
    )
    assert not (tmp_path / "s.log").exists()
    assert cli.main(["serve", "--port", "0"]) == 64
    assert capsys.readouterr().err == "cluster-spark: error: --port 0: a TCP port is 1 to 65535\n"


def test_a_server_on_this_machine_gets_the_small_input_settings(monkeypatch):
    """A Connect session to a server on this machine with a small input gets
    SMALL_INPUT_CONF as its own settings (--conf wins); a remote one does not."""
    sent = {}
    monkeypatch.setattr(session, "connect_spark", lambda remote, conf: sent.update({remote: conf}))
    session.build_spark(remote="sc://localhost:15002", input_bytes=1000, extra_conf={"a": "1"})
    assert sent["sc://localhost:15002"] == {**session.SMALL_INPUT_CONF, "a": "1"}
    session.build_spark(remote="sc://spark.example:15002", input_bytes=None)
    assert sent["sc://spark.example:15002"] == {}
    assert session.local_server("sc://127.0.0.1:1") and not session.local_server("sc://h:1")


@pytest.mark.slow
def test_the_entry_point_quiet_with_conf_and_report(inputs, tmp_path):
    """`cluster-spark run -q --conf … --report …` in its own JVM: only results on stdout,
    nothing from Spark on stderr but the JVM's own start-up line, and the event log (turned
    on by --conf) shows the session's settings: LOCAL_CONF and SMALL_INPUT_CONF, -q's and
    the --conf ones."""
    conf = _config_file(inputs, tmp_path, metrics=["purchases_per_org"])
    events = tmp_path / "eventlog"
    events.mkdir()
    page = tmp_path / "e1.html"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    proc = subprocess.run(
        [str(CLI), "run", "-q", "--config", str(conf), "--date", "2026-03-09",
         "--conf", "spark.eventLog.enabled=true", "--conf", "spark.eventLog.compress=false",
         "--conf", f"spark.eventLog.dir={events.as_uri()}", "--report", str(page)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "purchases_per_org" in proc.stdout and proc.stdout.endswith(f"wrote {page}\n")
    lines = [x for x in proc.stderr.splitlines() if "incubator modules" not in x]
    assert lines == [], proc.stderr
    assert "<h1>Experiment e1</h1>" in page.read_text("utf-8")
    (log,) = events.iterdir()
    env_update = next(
        json.loads(line)
        for path in ([log] if log.is_file() else sorted(log.iterdir()))
        for line in path.read_text().splitlines()
        if '"SparkListenerEnvironmentUpdate"' in line
    )
    props = dict(env_update["Spark Properties"])
    # LOCAL_CONF, and SMALL_INPUT_CONF over it: the inputs are a few KiB
    assert props["spark.databricks.delta.snapshotPartitions"] == "4"
    assert props["spark.sql.shuffle.partitions"] == "1"
    assert props["spark.sql.adaptive.enabled"] == "false"
    assert props["spark.sql.codegen.factoryMode"] == "NO_CODEGEN"
    assert props["spark.ui.showConsoleProgress"] == "false"
    assert props["spark.log.level"] == "ERROR"
    assert props["spark.eventLog.enabled"] == "true"
    assert props["spark.master"] == "local[*]"


def test_the_slice_hint_after_run_is_a_command_that_runs(inputs, tmp_path, started, capsys):
    """Issue #25 kind 10: the hint printed after `run` used to say `--dimension NAME`,
    without `--config` (exit 64) and with a name that is no dimension."""
    raw = config_dict("data")  # relative paths, resolved against --root
    raw["exposures"]["dimensions"] = ["experiment_id"]
    raw["experiments"][0]["dimensions"] = ["experiment_id"]
    raw["output"] = {k: f"out/{k}" for k in ("staging", "results", "diagnostics")}
    (tmp_path / "data").symlink_to(inputs)
    conf = tmp_path / "my conf.yaml"  # a space: the command must quote it
    conf.write_text(json.dumps(raw))
    args = ["run", "-q", "--config", str(conf), "--root", str(tmp_path), "--date", "2026-03-09"]
    assert cli.main(args) == 0
    notes = [
        line for line in capsys.readouterr().err.splitlines() if "results by experiment_id" in line
    ]
    assert len(notes) == 1, notes
    command = shlex.split(notes[0][notes[0].index("cluster-spark show") :])
    assert command[:2] == ["cluster-spark", "show"]
    assert command[-2:] == ["--dimension", "experiment_id"]
    assert cli.main(command[1:]) == 0
    shown = capsys.readouterr().out
    assert "e1" in shown  # the slice of the one experiment


def test_show_prints_the_recommendation_before_the_table(inputs, tmp_path, started, capsys):
    """Issue #26 item 3: the first line of `show` (and `run`) is the treatment's
    recommendation; the tiny experiment's goals cannot show the planned 1 %."""
    conf = _config_file(inputs, tmp_path, planned_mde=0.01)
    common = ["-q", "--config", str(conf), "--date", "2026-03-09"]
    assert cli.main(["run", *common]) == 0
    ran = capsys.readouterr().out.splitlines()
    assert cli.main(["show", *common]) == 0
    shown = capsys.readouterr().out.splitlines()
    for lines in (ran, shown):
        assert lines[0].startswith("recommendation e1 treatment: keep running (goal ")
        assert "underpowered: it can detect" in lines[0] and "planned 1.00%" in lines[0]
        assert not any(line.startswith("recommendation") for line in lines[1:])
        assert any("revenue_per_user" in line for line in lines[1:])
    assert shown[0] == ran[0]
