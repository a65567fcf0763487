"""GamePool: N games, each in its own worker process, every call bounded by a timeout.

Games hang (Jericho's `get_valid_actions` on some Zork I states) and interpreters crash (Jericho's calls
exit() on errors), so no game runs in the caller's process. The pool sends a call to every game at once and
waits for all replies until one shared deadline. A game that misses it, or whose process dies, is killed and
its worker restarted in the background; its episode ends as truncated with the reason in
`info["truncated_reason"]`, the event is logged and counted in `stats`, and the other games' results are
returned as usual. The caller is never blocked beyond `env.call_timeout_s` per call (plus
`env.start_timeout_s` when a worker is still starting).

Workers come from the "forkserver" start method (never fork a process that may hold torch threads); the
fork server preloads the game libraries (and spaCy's pipeline for Jericho) so a start or restart costs milliseconds,
not the seconds of a fresh import.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from priorzero.config import EnvConfig
from priorzero.envs import registry
from priorzero.envs.base import Observation, StepResult, TextGame, make_game, step_info
from priorzero.errors import UserError

log = logging.getLogger(__name__)

GameFactory = Callable[[str, EnvConfig], TextGame]
_PRELOAD = {"textworld": ["textworld", "priorzero.envs.textworld_game"], "jericho": ["jericho", "spacy", "priorzero.envs.jericho_preload"]}


@dataclass
class PoolStats:
    timeouts: int = 0  # calls that missed the deadline (the worker was killed)
    crashes: int = 0  # workers that died on their own
    errors: int = 0  # calls that raised inside the game (the worker lives on)
    restarts: int = 0  # workers started again after a timeout or crash


def _worker_main(conn: Connection, env_id: str, env_config: EnvConfig, factory: GameFactory) -> None:
    """A worker's whole life: open the game, then answer (method, args) requests until told to close, or until the
    parent goes away (stopped by Ctrl-C while the game opened, say): then it ends quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if env_config.worker_nice:
        os.nice(env_config.worker_nice)
    try:
        _serve(conn, env_id, env_config, factory)
    except (EOFError, BrokenPipeError, ConnectionResetError):  # the parent's end of the pipe is closed
        return


def _serve(conn: Connection, env_id: str, env_config: EnvConfig, factory: GameFactory) -> None:
    try:
        game = factory(env_id, env_config)
    except UserError as exc:
        conn.send(("user_error", str(exc)))
        return
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    try:
        conn.send(("ready", None))
        while True:
            method, args = conn.recv()
            if method == "close":
                return
            try:
                conn.send(("ok", getattr(game, method)(*args)))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        game.close()


class _Worker:
    """One game's process and the parent's end of its pipe."""

    def __init__(self, context: Any, env_id: str, env_config: EnvConfig, factory: GameFactory):
        self.env_id = env_id
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child_conn, env_id, env_config, factory), name=f"priorzero-game-{env_id}", daemon=True
        )
        self.process.start()
        child_conn.close()
        self.ready = False

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(("close", ()))
        except (OSError, ValueError):
            pass
        self.process.join(timeout=2)
        self.kill()

    def died_reason(self) -> str:
        self.process.join(timeout=1)
        return f"worker crashed (exit code {self.process.exitcode})"


def worker_context(backends: set[str]) -> Any:
    """The "forkserver" multiprocessing context for game workers of these backends, the fork server preloading
    their libraries (and, for Jericho, spaCy's pipeline: envs/jericho_preload.py)."""
    context = multiprocessing.get_context("forkserver")
    # Takes effect only if the fork server is not running yet.
    modules = sorted({module for backend in backends for module in _PRELOAD[backend]})
    context.set_forkserver_preload(["priorzero.envs.quiet_interrupts", *modules])
    return context


class GamePool:
    """N games in worker processes: `reset(seeds)` and `step(commands)` act on all of them at once.

    In `step`, a command of None leaves that game alone and its result is None (for callers whose games
    finish at different times). A game whose episode ended (terminated or truncated) must be reset before
    it is stepped again; `reset_games` resets only some. A reset retries a failed game once (in a fresh
    worker if it hung or crashed) and raises RuntimeError if that fails too. Bad env ids raise UserError here, in the caller's process,
    before any worker starts.
    """

    def __init__(self, env_ids: list[str], env_config: EnvConfig, game_factory: GameFactory = make_game):
        if not env_ids:
            raise ValueError("GamePool needs at least one env id")
        backends = {registry.resolve(env_id, env_config).backend for env_id in dict.fromkeys(env_ids)}
        self.env_ids = list(env_ids)
        self.env_config = env_config
        self.stats = PoolStats()
        self._factory = game_factory
        self._context = worker_context(backends)
        self._workers = [self._start(env_id) for env_id in self.env_ids]
        self._last: list[Observation | None] = [None] * len(self.env_ids)
        self._episode_over = [True] * len(self.env_ids)
        self._in_flight: dict[int, tuple[tuple, float, tuple[bool, Any] | None]] = {}  # sent steps: request, when, start failure

    def __len__(self) -> int:
        return len(self.env_ids)

    @property
    def pids(self) -> list[int | None]:
        return [worker.process.pid for worker in self._workers]

    def reset(self, seeds: list[int | None]) -> list[Observation]:
        self._check_length(seeds, "seeds")
        return self.reset_games(list(range(len(self))), seeds)

    def reset_games(self, indices: list[int], seeds: list[int | None]) -> list[Observation]:
        """Reset only the games at `indices` (one seed each); the other games' episodes go on."""
        if len(seeds) != len(indices):
            raise ValueError(f"expected {len(indices)} seeds, one per index, got {len(seeds)}")
        wanted = dict(zip(indices, seeds, strict=True))
        replies = self._call({i: ("reset", (seed,)) for i, seed in wanted.items()})
        failed = [i for i, (ok, _) in replies.items() if not ok]
        if failed:  # one more try
            replies.update(self._call({i: ("reset", (wanted[i],)) for i in failed}))
        for i in wanted:
            ok, value = replies[i]
            if not ok:
                if str(value).startswith("timeout after"):
                    raise UserError(
                        f"game {self.env_ids[i]} did not answer a reset within env.call_timeout_s={self.env_config.call_timeout_s:g} s, twice; "
                        f"allow it longer, e.g. --set env.call_timeout_s=60"
                    )
                raise RuntimeError(f"game {i} ({self.env_ids[i]}) failed to reset twice: {value}")
            self._last[i] = value
            self._episode_over[i] = False
        return [self._last[i] for i in indices]  # type: ignore[misc]

    def step(self, commands: list[str | None]) -> list[StepResult | None]:
        self._check_length(commands, "commands")
        chosen = {i: command for i, command in enumerate(commands) if command is not None}
        self.send_steps(chosen)
        results: list[StepResult | None] = [None] * len(self)
        for i, result in self.receive_steps(list(chosen)).items():
            results[i] = result
        return results

    def send_steps(self, commands: dict[int, str]) -> None:
        """Send these games their commands without waiting: the games step while the caller works on.
        `receive_steps` collects the results; a game with a step in flight takes no other call until then."""
        for i in commands:
            if self._episode_over[i]:
                raise RuntimeError(f"game {i} ({self.env_ids[i]}) must be reset before it is stepped")
            if i in self._in_flight:
                raise RuntimeError(f"game {i} ({self.env_ids[i]}) already has a step in flight")
        failures = self._await_ready(list(commands))
        for i, command in commands.items():
            request = ("step", (command,))
            if i not in failures:
                self._workers[i].conn.send(request)
            self._in_flight[i] = (request, time.monotonic(), failures.get(i))

    def receive_steps(self, indices: list[int]) -> dict[int, StepResult]:
        """The results of the steps sent to these games, waiting at most env.call_timeout_s after each was sent."""
        pending = {i: self._in_flight.pop(i) for i in indices}
        live = [i for i, (_, _, failure) in pending.items() if failure is None]
        deadline = min((sent for _, sent, _ in pending.values()), default=time.monotonic()) + self.env_config.call_timeout_s
        replies = self._receive(live, max(0.0, deadline - time.monotonic()), self.env_config.call_timeout_s)
        results: dict[int, StepResult] = {}
        for i, (request, _, failure) in pending.items():
            ok, value = failure if failure is not None else self._interpret(i, replies[i], f"step({request[1][0]!r})")
            result = value if ok else self._truncated(i, value)
            self._last[i] = result.observation
            self._episode_over[i] = result.terminated or result.truncated
            results[i] = result
        return results

    def walkthrough(self, index: int) -> list[str] | None:
        ok, value = self._call({index: ("walkthrough", ())})[index]
        if not ok:
            raise RuntimeError(f"game {index} ({self.env_ids[index]}): walkthrough failed: {value}")
        return value

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> GamePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _check_length(self, values: list, name: str) -> None:
        if len(values) != len(self):
            raise ValueError(f"expected {len(self)} {name}, one per game, got {len(values)}")

    def _start(self, env_id: str) -> _Worker:
        return _Worker(self._context, env_id, self.env_config, self._factory)

    def _call(self, requests: dict[int, tuple[str, tuple]]) -> dict[int, tuple[bool, Any]]:
        """Send each game its request, wait for all replies until one deadline; (ok, result or reason) each."""
        outcome = self._await_ready(list(requests))
        live = [i for i in requests if i not in outcome]
        for i in live:
            self._workers[i].conn.send(requests[i])
        for i, reply in self._receive(live, self.env_config.call_timeout_s).items():
            method = requests[i][0]
            outcome[i] = self._interpret(i, reply, f"{method}({', '.join(map(repr, requests[i][1]))})")
        return outcome

    def _await_ready(self, indices: list[int]) -> dict[int, tuple[bool, Any]]:
        """Wait for starting workers to open their games; failures (ok=False) for those that did not."""
        starting = [i for i in indices if not self._workers[i].ready]
        failures: dict[int, tuple[bool, Any]] = {}
        for i, (kind, payload) in self._receive(starting, self.env_config.start_timeout_s).items():
            if kind == "ready":
                self._workers[i].ready = True
            elif kind == "user_error":
                raise UserError(payload)
            else:  # a worker that cannot open its game has exited: a crash, restarted like any other
                failures[i] = self._interpret(i, ("crashed" if kind == "error" else kind, payload), "start")
        return failures

    def _receive(self, indices: list[int], timeout: float, limit_s: float | None = None) -> dict[int, tuple[str, Any]]:
        """Replies within `timeout` seconds; the others time out (reported as `limit_s`, the call's whole limit)."""
        deadline = time.monotonic() + timeout
        waiting = {self._workers[i].conn: i for i in indices}
        replies: dict[int, tuple[str, Any]] = {}
        while waiting:
            remaining = deadline - time.monotonic()
            ready = wait(list(waiting), timeout=max(remaining, 0.0))  # a reply already there counts, even past the deadline
            if not ready and remaining <= 0:
                break
            for conn in ready:
                i = waiting.pop(conn)  # type: ignore[call-overload]
                try:
                    replies[i] = conn.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    replies[i] = ("crashed", self._workers[i].died_reason())
        for i in waiting.values():
            replies[i] = ("timeout", f"timeout after {limit_s if limit_s is not None else timeout:g} s")
        return replies

    def _interpret(self, index: int, reply: tuple[str, Any], what: str) -> tuple[bool, Any]:
        kind, payload = reply
        if kind in ("ok", "ready"):
            return True, payload
        reason = f"{payload} in {what}"
        if kind == "error":
            self.stats.errors += 1
            log.warning("game %d (%s): %s", index, self.env_ids[index], reason)
            return False, reason
        if kind == "timeout":
            self.stats.timeouts += 1
        else:
            self.stats.crashes += 1
        self._restart(index, reason)
        return False, f"{reason}; worker restarted"

    def _restart(self, index: int, reason: str) -> None:
        log.warning("game %d (%s): %s; killing and restarting its worker", index, self.env_ids[index], reason)
        self._workers[index].kill()
        self._workers[index] = self._start(self.env_ids[index])
        self.stats.restarts += 1
        self._episode_over[index] = True

    def _truncated(self, index: int, reason: str) -> StepResult:
        last = self._last[index]
        assert last is not None  # a game is stepped only after a reset
        return StepResult(last, 0.0, False, True, step_info(None, None, reason))
