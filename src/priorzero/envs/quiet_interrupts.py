"""Imported first by the game workers' fork server (envs/pool.py): Ctrl-C belongs to the parent.

The fork server and every worker it forks share the terminal's process group, so a Ctrl-C reaches them too; the
parent stops its run cleanly, and without this the fork server would print a KeyboardInterrupt traceback."""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
