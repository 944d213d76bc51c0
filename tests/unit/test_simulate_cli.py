"""`warmbuild simulate` and `warmbuild plan` from the command line: outputs, files, errors."""

from __future__ import annotations

import builtins
import json

import pytest

from warmbuild import cli
from warmbuild.pool.records import BuildRecord, render_records

SMALL = ["--keys", "30", "--builds-per-day", "1500", "--days", "0.25", "--seed", "3"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_prints_one_row_per_policy_and_is_deterministic(capsys):
    code, out, err = run(capsys, "simulate", *SMALL, "--builders", "3", "--slots", "2")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| policy")]
    assert [r.split("|")[1].strip() for r in rows] == ["warmbuild", "sticky", "random", "dedicated"]
    assert "simulating" in err and "3 builders × 2 slots" in err
    again = run(capsys, "simulate", *SMALL, "--builders", "3", "--slots", "2")[1]
    assert again == out


def test_simulate_writes_a_report_metrics_outcomes_and_charts(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(
        capsys,
        "simulate",
        *SMALL,
        "--policies",
        "warmbuild,random",
        "--scale",
        "2h:join:1",
        "--scale",
        "4h:drain:2",
        "--output-dir",
        str(tmp_path),
        "--json",
    )
    assert code == 0, err
    document = json.loads(out)
    assert [p["policy"] for p in document["policies"]] == ["warmbuild", "random"]
    assert document["config"]["fleet"]["scale_events"][1] == {"time": 14400.0, "action": "drain", "count": 2}
    for name in (
        "report.md",
        "metrics.json",
        "outcomes-warmbuild.jsonl",
        "simulate-policies.png",
        "simulate-cdf.png",
        "simulate-over-time.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "simulate-policies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![simulate-cdf](simulate-cdf.png)" in (tmp_path / "report.md").read_text()
    first = json.loads((tmp_path / "outcomes-warmbuild.jsonl").read_text().splitlines()[0])
    assert {"arrival", "path", "builder", "warm_cache", "queue_seconds", "status"} <= set(first)


def test_charts_without_matplotlib_say_which_extra_to_install(capsys, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, _, err = run(capsys, "simulate", *SMALL, "--policies", "random", "--output-dir", str(tmp_path))
    assert code == 4
    assert "warmbuild: error: charts need matplotlib: pip install 'warmbuild[plan]' (or pass --no-charts)" in err
    code, _, err = run(capsys, "simulate", *SMALL, "--policies", "random", "--output-dir", str(tmp_path), "--no-charts")
    assert code == 0 and (tmp_path / "report.md").exists()


def test_plan_finds_the_smallest_pool_and_shows_the_curve(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(
        capsys,
        "plan",
        *SMALL,
        "--p95-seconds",
        "400",
        "--slots",
        "1,2",
        "--max-builders",
        "32",
        "--output-dir",
        str(tmp_path),
    )
    assert code == 0, err
    assert "smallest pool meeting p95 end-to-end build time ≤ 400 s:" in out
    assert "**yes: smallest**" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    best = plan["best"]
    tried = {(p["builders"], p["slots"]): p for p in plan["points"]}
    assert tried[(best["builders"], best["slots"])]["meets"]
    if best["builders"] > 1:
        assert not tried[(best["builders"] - 1, best["slots"])]["meets"]  # bisected to the edge
    assert (tmp_path / "plan-curve.png").stat().st_size > 0
    assert "builders × 1 slots" in err or "builders × 2 slots" in err  # progress per point


def test_plan_that_no_pool_meets_exits_1_and_says_so(capsys):
    code, out, _ = run(
        capsys, "plan", *SMALL, "--p95-seconds", "1", "--slots", "2", "--max-builders", "4", "--no-charts"
    )
    assert code == 1
    assert "no pool of up to 4 builders meets p95 end-to-end build time ≤ 1 s" in out


def test_simulate_replays_a_history_file(capsys, tmp_path):
    records = [
        BuildRecord(
            f"h{i % 3}",
            1000.0 + 20 * i,
            "warm" if i % 4 else "spill",
            f"builders-{i % 2}",
            0.02,
            0.0,
            8.0 + i % 3,
            8.0,
            0.7,
            "success",
        )
        for i in range(40)
    ]
    path = tmp_path / "history.jsonl"
    path.write_text(render_records(records))
    code, out, err = run(capsys, "simulate", "--history", str(path), "--builders", "2", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["workload"].startswith("history: 40 builds of 3 workload keys")
    assert all(p["builds"] == 40 for p in document["policies"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["simulate", "--policies", "fastest"],
            "--policies: unknown fastest; choose from warmbuild, sticky, random, dedicated",
        ),
        (["simulate", "--scale", "8h:grow:2"], "expected TIME:ACTION:COUNT with ACTION join, drain or crash"),
        (["simulate", "--scale", "soon:join:2"], "not a duration: 'soon'"),
        (
            ["simulate", "--history", "/nonexistent.jsonl"],
            "no such file (write one with 'warmbuild history export -o FILE')",
        ),
        (["simulate", "--builders", "0"], "--builders, --slots and --cache-keys must be at least 1"),
        (["simulate", "--deps-share", "2"], "--deps-share must be between 0 and 1"),
        (["plan", "--p95-seconds", "60", "--slots", "two"], "--slots 'two': comma-separated whole numbers"),
        (["plan"], "the following arguments are required: --p95-seconds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
