"""Imported by the game workers' fork server (envs/pool.py:worker_context): loads the spaCy pipeline Jericho's listing
uses once, there, so that every game worker forked from the server starts with it instead of loading it again
(half a second of CPU per worker; 256 workers on 16 cores spent seconds of start-up on it). Where the pipeline is
missing nothing happens here: each game then says so itself, in one clear line, when it opens."""

from priorzero.envs.jericho_game import use_spacy_pipeline
from priorzero.errors import UserError

try:
    use_spacy_pipeline()
except UserError:
    pass
