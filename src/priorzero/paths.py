"""Where PriorZero keeps caches and looks for games, each overridable by an environment variable."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """$PRIORZERO_CACHE_DIR, else $XDG_CACHE_HOME/priorzero, else ~/.cache/priorzero."""
    if explicit := os.environ.get("PRIORZERO_CACHE_DIR"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "priorzero"


def data_dir() -> Path:
    """$XDG_DATA_HOME/priorzero, else ~/.local/share/priorzero."""
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser() / "priorzero"
