"""``saddle bench``: runs benchmark scripts in subprocesses and gathers their ratio columns."""

from __future__ import annotations

import textwrap


from saddle.bench import BenchmarkRun, find_scripts, markdown_tables, ratio_rows, report
from saddle.cli import main

OUTPUT = """\
device: cpu

| case | HiGHS [s] | saddle [s] | HiGHS / saddle | status |
|---|---|---|---|---|
| B=1, n=1000 | 17.41 | 2.77 | 6.28x | 1 CONVERGED |
| B=256, n=50 | 0.98 | 12.66 | 0.08x | 256 CONVERGED |

| model | params | saddle / (2 x base) |
|---|---|---|
| MLP | 1,024 (4) | 1.013 |
"""


def test_tables_and_ratio_cells_are_parsed():
    tables = markdown_tables(OUTPUT)
    assert [len(t) for t in tables] == [3, 2]
    assert tables[0][0] == ["case", "HiGHS [s]", "saddle [s]", "HiGHS / saddle", "status"]
    rows = ratio_rows(BenchmarkRun("matrix_games", [], 0, 1.0, OUTPUT, ""))
    assert rows == [("matrix_games", "B=1, n=1000", "HiGHS / saddle", 6.28),
                    ("matrix_games", "B=256, n=50", "HiGHS / saddle", 0.08),
                    ("matrix_games", "MLP, 1,024 (4)", "saddle / (2 x base)", 1.013)]


def test_bench_runs_scripts_and_writes_the_report(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "toy.py").write_text(textwrap.dedent('''
        import argparse
        p = argparse.ArgumentParser()
        p.add_argument("--quick", action="store_true")
        args = p.parse_args()
        print("| case | ours / theirs |")
        print("|---|---|")
        print(f"| {'quick' if args.quick else 'full'} | 2.5 |")
    '''))
    (folder / "broken.py").write_text("raise SystemExit(3)\n")
    (folder / "run_all.py").write_text("raise RuntimeError('not a benchmark')\n")
    assert [p.name for p in find_scripts(folder)] == ["broken.py", "toy.py"]
    out = tmp_path / "report.md"
    assert main(["bench", "--folder", str(folder), "-o", str(out)]) == 1  # one script failed
    text = out.read_text()
    assert "| toy | quick | ours / theirs | 2.5 |" in text
    assert "| broken | (failed: exit 3) | - | - |" in text
    assert main(["bench", "--folder", str(folder), "--only", "toy", "--full", "-o", str(out)]) == 0
    assert "| toy | full | ours / theirs | 2.5 |" in out.read_text()


def test_bench_errors_name_the_argument(tmp_path, capsys):
    assert main(["bench", "--folder", str(tmp_path / "missing")]) == 2
    assert "benchmark folder" in capsys.readouterr().err
    (tmp_path / "a.py").write_text("")
    assert main(["bench", "--folder", str(tmp_path), "--only", "b"]) == 2
    assert "--only" in capsys.readouterr().err


def test_report_names_the_machine():
    text = report([BenchmarkRun("toy", ["python", "toy.py"], 0, 2.0, "| a | x / y |\n|---|---|\n| r | 3 |\n", "")])
    assert "torch" in text and "| toy | r | x / y | 3 |" in text
