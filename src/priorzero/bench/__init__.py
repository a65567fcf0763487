"""The programs behind `priorzero bench`; each module has `register(bench_app)`."""

from priorzero.errors import UserError


def parse_positive_ints(text: str, option: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; anything else is a one-line UserError naming the option."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{option} expects positive integers, got {text!r}")
    return values
