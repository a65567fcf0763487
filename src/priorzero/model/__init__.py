"""The world model: frozen text encoder, UniZero-style transformer dynamics over (latent, command) tokens, heads,
losses, and the conversion of stored step records into training batches."""

from priorzero.model.losses import LossWeights, WorldModelBatch, world_model_losses
from priorzero.model.targets import make_batch
from priorzero.model.text_encoder import TextEncoder
from priorzero.model.world_model import SearchState, SequenceOutput, WorldModel, WorldModelShape

__all__ = [
    "LossWeights",
    "SearchState",
    "SequenceOutput",
    "TextEncoder",
    "WorldModel",
    "WorldModelBatch",
    "WorldModelShape",
    "make_batch",
    "world_model_losses",
]
