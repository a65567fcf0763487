"""`priorzero bench envs` runs end to end and reports every cell (tiny workload)."""

import json
import os

import pytest

from priorzero.bench.envs import parse_workers
from priorzero.errors import UserError


def test_bench_envs_reports_every_cell(cli, default_game_file):
    result = cli("bench", "envs", "--jericho", "", "--steps", "10", "--repeats", "2", "--workers", "2", "--json")
    assert result.returncode == 0, result.stderr
    cells = json.loads(result.stdout.strip().splitlines()[-1])["cells"]
    assert {(c["valid_commands"], c["mode"]) for c in cells} == {(v, m) for v in (True, False) for m in ("in-process", "pool 2")}
    for cell in cells:
        assert cell["backend"] == "textworld" and len(cell["runs"]) == 2 and cell["steps_per_s"] > 0
        assert cell["vs_in_process"] == 1.0 if cell["mode"] == "in-process" else cell["vs_in_process"] > 0


def test_bench_envs_games_reports_the_ceiling_before_and_after(cli, jericho_dir):
    result = cli("bench", "envs", "--games", "detective.z5", "--game-dir", str(jericho_dir), "--workers", "1", "--seconds", "1", "--repeats", "1",
                 "--phases", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    [phases] = report["phases"]
    assert phases["env_id"] == "detective.z5" and phases["listings"] == 1 and phases["candidates"] > 100
    assert phases["ms"]["total"] == pytest.approx(sum(phases["ms"][name] for name in ("objects", "candidates", "emulator", "choose")), abs=0.05)
    assert 0 < phases["ms"]["spacy"] < phases["ms"]["objects"]
    cells = {cell["variant"]: cell for cell in report["ceiling"]}
    assert list(cells) == ["plain", "shared-cold", "shared-warm"] and report["max_episode_steps"] == 100
    for cell in cells.values():
        assert cell["env_id"] == "detective.z5" and cell["workers"] == 1 and cell["steps_per_s"] > 0 and len(cell["runs"]) == 1
    assert cells["plain"]["vs_plain"] == 1.0 and cells["plain"]["shared_hits"] == cells["plain"]["waits"] == [0]  # plain has no shared cache
    assert cells["plain"]["listed"][0] >= 1


def test_workers_take_numbers_or_auto():
    assert parse_workers(["auto", "2"]) == [os.cpu_count(), 2]
    with pytest.raises(UserError, match="positive number or 'auto'"):
        parse_workers(["0"])
