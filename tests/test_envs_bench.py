"""`priorzero bench envs` runs end to end and reports every cell (tiny workload)."""

import json


def test_bench_envs_reports_every_cell(cli, default_game_file):
    result = cli("bench", "envs", "--jericho", "", "--steps", "10", "--repeats", "2", "--workers", "2", "--json")
    assert result.returncode == 0, result.stderr
    cells = json.loads(result.stdout.strip().splitlines()[-1])["cells"]
    assert {(c["valid_commands"], c["mode"]) for c in cells} == {(v, m) for v in (True, False) for m in ("in-process", "pool 2")}
    for cell in cells:
        assert cell["backend"] == "textworld" and len(cell["runs"]) == 2 and cell["steps_per_s"] > 0
        assert cell["vs_in_process"] == 1.0 if cell["mode"] == "in-process" else cell["vs_in_process"] > 0
