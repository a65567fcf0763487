"""`priorzero bench mcts`: simulations per second of the batched tree search over the world model, and the share
of search time spent outside the model (tree bookkeeping: selection, expansion, backup).

Workload per cell: B games, each a root with K candidate commands (all valid), a random-weight world model of the
configured shape (`--preset`, `--set model.*`; speed does not depend on the weights), random unit-length vectors in
place of the text encoder's embeddings (the encoder runs once per environment step, outside the search), and the
root prior of collection: the world model's policy mixed half and half with a peaked synthetic LM prior
(Dirichlet(0.3) over the candidates), plus Dirichlet noise. The trees' depths are reported, since they set how long
selection walks.

Timing: one warm-up search, then the median of --repeats. Model time is measured around every
`recurrent_inference` call: on CPU with the host clock, on a GPU with CUDA events (no synchronisation inside the
search; the events are read after it). Bookkeeping share = 1 - model time / search time. With CUDA graphs the model's
step is replayed inside each simulation's graph, so its time cannot be told apart there (model ms and bookkeeping: -).
On a GPU the bench also checks that the search there gives the same visit counts as on the CPU (float64, same model).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import torch
import typer

from priorzero.bench import parse_positive_ints
from priorzero.cli import ConfigFileOpt, PresetOpt, SetOpt, resolve_config
from priorzero.config import Config
from priorzero.errors import UserError
from priorzero.llm.loading import resolve_device
from priorzero.model.world_model import WorldModel, WorldModelShape
from priorzero.search import RootOutput, SearchParams, init_tree, plan, run_simulations
from priorzero.search.interface import RecurrentOutput
from priorzero.search.root import combine_priors

SYNTHETIC_LM_ALPHA = 0.3
TEXT_DIM = 384


class TimedModel:
    """Wraps a model's recurrent_inference and accumulates the time spent inside it, without syncing a GPU."""

    def __init__(self, model: WorldModel, device: torch.device):
        self.model, self.on_cuda = model, device.type == "cuda"
        self.host_seconds = 0.0
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def recurrent_inference(self, *args: Any) -> RecurrentOutput:
        if self.on_cuda and torch.cuda.is_current_stream_capturing():  # recorded into a graph, not run: nothing to time
            return self.model.recurrent_inference(*args)
        if self.on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.model.recurrent_inference(*args)
            end.record()
            self.events.append((start, end))
            return out
        began = time.perf_counter()
        out = self.model.recurrent_inference(*args)
        self.host_seconds += time.perf_counter() - began
        return out

    def seconds(self) -> float:
        """Total model time; call after the search has finished (and, on a GPU, been synchronised)."""
        return self.host_seconds + sum(start.elapsed_time(end) for start, end in self.events) / 1000


@dataclass
class Row:
    device: str
    mode: str  # eager, or graphs (each simulation replayed as a CUDA graph)
    games: int
    simulations: int
    candidates: int
    search_ms: float  # median wall time of one batched search
    simulations_per_s: float  # games * simulations / search time
    model_ms: float | None  # median time inside recurrent_inference (None with graphs: the model is inside them)
    bookkeeping_share: float | None  # 1 - model / search, median over repeats (None with graphs)
    mean_max_depth: float  # deepest node per game, averaged over games (last repeat)


def synthetic_inputs(games: int, candidates: int, device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1).to(device)

    lm_prior = torch.distributions.Dirichlet(torch.full((candidates,), SYNTHETIC_LM_ALPHA)).sample((games,))
    return dict(
        observations=unit(games, 1, TEXT_DIM),
        past_actions=unit(games, 0, TEXT_DIM),
        context_mask=torch.ones(games, 1, dtype=torch.bool, device=device),
        candidates=unit(games, candidates, TEXT_DIM),
        candidate_mask=torch.ones(games, candidates, dtype=torch.bool, device=device),
        lm_prior=lm_prior.to(device),
    )


def one_search(model: WorldModel, inputs: dict[str, torch.Tensor], params: SearchParams, config: Config, stepper: Any = None):
    """One search as collection runs it; `stepper` (default: the model) answers the search's recurrent_inference."""
    root: RootOutput = model.initial_inference(
        inputs["observations"], inputs["past_actions"], inputs["context_mask"], inputs["candidates"], params.num_simulations
    )
    return plan(stepper or model, root, inputs["candidate_mask"], params, lm_prior=inputs["lm_prior"])


def search_params(config: Config, simulations: int, cuda_graphs: bool = False) -> SearchParams:
    return dataclasses.replace(
        SearchParams.from_config(config.search, explore=True), num_simulations=simulations, cuda_graphs=cuda_graphs, cuda_graphs_max_games=1 << 30
    )  # the bench compares the two modes at every size


def run_cell(model: WorldModel, device: torch.device, mode: str, games: int, simulations: int, candidates: int, repeats: int, config: Config) -> Row:
    generator = torch.Generator().manual_seed(games * 1000 + simulations)
    inputs = synthetic_inputs(games, candidates, device, generator)
    params = search_params(config, simulations, cuda_graphs=mode == "graphs")
    one_search(model, inputs, params, config)  # warm-up
    totals, model_times, shares = [], [], []
    for _ in range(repeats):
        timed = TimedModel(model, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        out = one_search(model, inputs, params, config, stepper=timed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - began
        totals.append(total)
        model_times.append(timed.seconds())
        shares.append(1 - model_times[-1] / total)
    timed_apart = mode != "graphs"
    depth = out.tree.node_depth.max(dim=1).values.float().mean().item()
    search_s = statistics.median(totals)
    return Row(
        device=str(device),
        mode=mode,
        games=games,
        simulations=simulations,
        candidates=candidates,
        search_ms=1000 * search_s,
        simulations_per_s=games * simulations / search_s,
        model_ms=1000 * statistics.median(model_times) if timed_apart else None,
        bookkeeping_share=statistics.median(shares) if timed_apart else None,
        mean_max_depth=depth,
    )


def gpu_checks(model: WorldModel, device: torch.device, config: Config, modes: list[str], games: int = 8, simulations: int = 50) -> dict[str, Any]:
    """The same search (float64, no noise, same model and inputs) on the CPU and on the GPU, eagerly and with CUDA
    graphs: do the visit counts agree, and how many host syncs happen inside the simulation loop (should be 0)."""
    inputs = synthetic_inputs(games, 55, torch.device("cpu"), torch.Generator().manual_seed(7))
    results: dict[str, Any] = {}
    counts = {}
    for where, mode in [(torch.device("cpu"), "eager")] + [(device, mode) for mode in modes]:
        replica = WorldModel(model.shape).double().to(where)
        replica.load_state_dict(model.state_dict())
        moved = {k: (v.double() if v.is_floating_point() else v).to(where) for k, v in inputs.items()}
        root = replica.initial_inference(moved["observations"], moved["past_actions"], moved["context_mask"], moved["candidates"], simulations)
        prior = combine_priors(root.policy_logits, moved["lm_prior"], moved["candidate_mask"], "mix", 0.5)
        tree = init_tree(prior, root.value, moved["candidate_mask"], simulations)
        params = search_params(config, simulations, cuda_graphs=mode == "graphs")
        if where.type == "cuda":
            torch.cuda.synchronize(where)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    run_simulations(replica, root.state, tree, params)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            results[f"host_syncs_{mode}"] = sum("synchroniz" in str(w.message) for w in caught)
        else:
            run_simulations(replica, root.state, tree, params)
        counts[f"{where.type}_{mode}"] = tree.children_visits[:, 0].cpu()
    for mode in modes:
        results[f"cuda_{mode}_matches_cpu"] = torch.equal(counts[f"cuda_{mode}"], counts["cpu_eager"])
    return results


def _devices(text: str) -> list[torch.device]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [resolve_device(name, option="--devices") for name in names]


MODES = ("eager", "graphs")


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"--modes expects a comma-separated subset of {', '.join(MODES)}, got {text!r}")
    return modes


def _print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("device", "mode", "games", "sims", "search ms", "sims/s", "model ms", "bookkeeping", "depth"):
        table.add_column(column, justify="left" if column in ("device", "mode") else "right")
    for r in rows:
        table.add_row(
            r.device, r.mode, str(r.games), str(r.simulations), f"{r.search_ms:.1f}", f"{r.simulations_per_s:,.0f}",
            "-" if r.model_ms is None else f"{r.model_ms:.1f}",
            "-" if r.bookkeeping_share is None else f"{100 * r.bookkeeping_share:.0f}%", f"{r.mean_max_depth:.1f}",
        )  # fmt: skip
    Console().print(table)


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("mcts")
    def mcts(
        preset: PresetOpt = None,
        config_file: ConfigFileOpt = None,
        set_: SetOpt = None,
        devices: Annotated[str, typer.Option("--devices", help="Comma-separated devices; default: cpu, and cuda when there is one.")] = "",
        games: Annotated[str, typer.Option("--games", "-B", help="Games searched together, comma-separated.")] = "1,8,32",
        simulations: Annotated[str, typer.Option("--simulations", "-S", help="Simulations per search, comma-separated.")] = "25,50",
        candidates: Annotated[int, typer.Option("--candidates", "-K", min=1, help="Candidate commands per root.")] = 55,
        repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed searches per cell (median reported), after one warm-up.")] = 5,
        threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads for torch (the search's tensors are small: 1 is fastest on a shared machine).")] = 1,
        modes: Annotated[str, typer.Option("--modes", help="eager and/or graphs (each simulation a CUDA graph; GPU only).")] = "eager,graphs",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random-weight world model.")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
    ) -> None:
        """Time the batched search over a random-weight world model and its share of tree bookkeeping."""
        config = resolve_config(preset=preset, config_file=config_file, overrides=set_)
        cells = [(b, s) for b in parse_positive_ints(games, "--games") for s in parse_positive_ints(simulations, "--simulations")]
        chosen = _devices(devices)
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        shape = WorldModelShape.from_config(config.model, TEXT_DIM)
        base = WorldModel(shape).eval()
        rows: list[Row] = []
        checks: dict[str, dict[str, Any]] = {}
        from rich.progress import track

        chosen_modes = _modes(modes)
        work = [(d, m, b, s) for d in chosen for m in chosen_modes if d.type == "cuda" or m == "eager" for b, s in cells]
        for device, mode, b, s in track(work, description="bench mcts", transient=True, disable=as_json):
            rows.append(run_cell(base.to(device), device, mode, b, s, candidates, repeats, config))
        for device in chosen:
            if device.type == "cuda":
                checks[str(device)] = gpu_checks(base.cpu(), device, config, chosen_modes)
        machines = {str(d): torch.cuda.get_device_name(d) if d.type == "cuda" else f"cpu ({threads} thread{'s' * (threads > 1)})" for d in chosen}
        header = dict(model=asdict(shape), machines=machines, repeats=repeats, torch=torch.__version__, gpu_checks=checks)
        if as_json:
            print(json.dumps({**header, "rows": [asdict(r) for r in rows]}, indent=2))
            return
        _print_table(rows, f"bench mcts: latent {shape.latent_dim}, {shape.num_layers} layers, K={candidates}, median of {repeats}")
        for device, result in checks.items():
            typer.echo(f"{device}: {', '.join(f'{key} = {value}' for key, value in result.items())}")


if __name__ == "__main__":  # `python -m priorzero.bench.mcts ...`: this benchmark alone, e.g. on a bare GPU machine
    standalone = typer.Typer(add_completion=False)
    register(standalone)
    standalone()
