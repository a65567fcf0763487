"""The search's CUDA graphs under a tight memory cap (a GPU check; search/mcts.py:capture_or_none).

    python3 scripts/graph_capture_budget.py [GAMES] [SIMULATIONS] [ROOM_MIB]

Runs one evaluation search (no noise, greedy) with graphs as a reference, then caps the process at what PyTorch
holds plus 2 GiB, fills 2 GiB minus ROOM_MIB (default 2) of that with a block it frees again (cached, not allocated: what a
language-model update leaves behind), and searches again. Before capture_or_none the second capture ran out of
memory; now it gives the cache back and captures again, or searches eagerly. Prints one JSON line: the same visit
counts as the reference, how often the cache was released, the memory figures.
"""

import dataclasses
import json
import sys

import torch

from priorzero.bench.mcts import TEXT_DIM, one_search, search_params, synthetic_inputs
from priorzero.config import Config
from priorzero.model.world_model import WorldModel, WorldModelShape

games, simulations, room_mib = (int(a) for a in (sys.argv[1:] + ["64", "50", "2"][len(sys.argv) - 1 :])[:3])
device = torch.device("cuda", 0)
config = Config()
model = WorldModel(WorldModelShape.from_config(config.model, TEXT_DIM)).to(device).eval()
inputs = synthetic_inputs(games, 55, device, torch.Generator().manual_seed(0))
params = dataclasses.replace(search_params(config, simulations, cuda_graphs=True), noise_alpha=None, temperature=0.0)
with torch.no_grad():
    reference = one_search(model, inputs, params, config).visit_counts.cpu()
    releases = []
    release = torch.cuda.empty_cache
    torch.cuda.empty_cache = lambda: (releases.append(1), release())[1]  # count what capture_or_none does
    cap = torch.cuda.memory_reserved(device) + (2 << 30)
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(device).total_memory, device)
    block = torch.empty((2 << 30) - (room_mib << 20), dtype=torch.uint8, device=device)
    del block  # cached by the allocator, not allocated
    cached_before = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    capped = one_search(model, inputs, params, config).visit_counts.cpu()
print(json.dumps({
    "games": games, "simulations": simulations, "room_mib": room_mib, "same_visit_counts": torch.equal(reference, capped), "cache_releases": len(releases),
    "cap_gib": round(cap / 2**30, 2), "cached_before_gib": round(cached_before / 2**30, 2),
}))
