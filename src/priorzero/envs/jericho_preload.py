"""Imported by the game workers' fork server (envs/pool.py:worker_context): loads the spaCy pipeline Jericho's listing
uses once, there, so that every game worker forked from the server starts with it instead of loading it again
(half a second of CPU per worker; 256 workers on 16 cores spent seconds of start-up on it). It is only a head start:
whatever stops the load here (a missing pipeline, a broken install) is left for each game to meet again when it
opens, and to report in the pool's usual way, rather than ending the fork server and every worker start with it."""

from priorzero.envs.jericho_game import use_spacy_pipeline

try:
    use_spacy_pipeline()
except Exception:  # noqa: BLE001 - see the docstring: the game's own open reports it
    pass
