"""`priorzero games list|make` through the real command line."""

import json
import shutil

from priorzero.envs import suite


def test_list_shows_the_suite_and_story_files_with_max_score_and_valid_commands(cli, jericho_dir, tmp_path, default_game_file):
    (tmp_path / "junk.z5").write_text("not a game\n" * 10)
    shutil.copy(default_game_file, tmp_path / "bare.z8")  # without TextWorld's metadata: unsupported by Jericho
    result = cli("games", "list", "--json", "--game-dir", str(tmp_path), env={"PRIORZERO_GAME_DIR": str(jericho_dir)})
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    rows = {row["env_id"]: row for row in listing["games"]}
    assert [d["path"] for d in listing["game_dirs"]][:2] == [str(tmp_path), str(jericho_dir)]
    assert set(suite.SUITE_BY_NAME) <= set(rows)
    default = rows[suite.DEFAULT_GAME]
    assert default["ready"] and default["max_score"] == 1.0 and default["valid_commands"] and default["backend"] == "textworld"
    detective = rows["detective.z5"]
    assert (detective["backend"], detective["max_score"], detective["valid_commands"]) == ("jericho", 360.0, True)
    assert not rows["junk.z5"]["ready"] and "not a Z-machine story file" in rows["junk.z5"]["note"]
    bare = rows["bare.z8"]
    assert bare["ready"] and not bare["valid_commands"] and bare["max_score"] is None
    assert "cannot list valid commands" in bare["note"]


def test_list_as_a_table_says_where_story_files_are_looked_up(cli, tmp_path):
    result = cli("games", "list", "--game-dir", str(tmp_path / "none"))
    assert result.returncode == 0 and suite.DEFAULT_GAME in result.stdout
    assert "(missing)" in result.stdout and "--game-dir" in result.stdout


def test_make_generates_into_the_cache(cli, tmp_path):
    name = "tw-treasure_hunter-l1-s1"
    result = cli("games", "make", name, env={"PRIORZERO_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "games" / f"{name}.z8").is_file() and (tmp_path / "games" / f"{name}.json").is_file()


def test_make_refuses_a_game_not_in_the_suite(cli):
    result = cli("games", "make", "tw-nope")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "not in the suite: tw-nope; suite games: " + suite.DEFAULT_GAME in result.stderr
