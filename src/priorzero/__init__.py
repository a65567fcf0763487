"""PriorZero: planning in a learned world model, guided by a language model's prior over valid commands."""

__version__ = "0.1.0"
