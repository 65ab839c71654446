"""Range checks of a config's numeric fields: a value outside its range is a one-line `UserError` naming the flag.

A config's `__post_init__` calls e.g. `check_ranges(self, {"lr": "> 0", "dropout": "[0, 1)"})`, so a bad value
is refused when the config is made, before a run folder is touched.
"""

import math
import operator

from foundation.cli import UserError

COMPARISONS = {">": operator.gt, ">=": operator.ge}


def in_range(value, rule: str) -> bool:
    """Whether `value` is finite and meets `rule`: "> 0", ">= 1", or an interval such as "[0, 1)"."""
    if not math.isfinite(value):
        return False
    if rule[0] in "[(":
        low, high = (float(bound) for bound in rule[1:-1].split(","))
        above = value >= low if rule[0] == "[" else value > low
        below = value <= high if rule[-1] == "]" else value < high
        return above and below
    comparison, bound = rule.split()
    return COMPARISONS[comparison](value, float(bound))


def check_ranges(config, ranges: dict) -> None:
    """A UserError for the first field of `config` outside its range in `ranges` ({field name: rule})."""
    for name, rule in ranges.items():
        value = getattr(config, name)
        if not in_range(value, rule):
            allowed = f"in {rule}" if rule[0] in "[(" else rule
            raise UserError(f"--{name.replace('_', '-')} must be {allowed}, got {value}")
