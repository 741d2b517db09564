"""Workers, schedulers and activation patterns: a population of mostly idle
coroutines woken sparsely and reproducibly, with per-worker attribution of
the memory they own. Sits above ``locality.layouts`` (it drives a layout's
``update``) and knows nothing of experiments or reports."""

from locality.population.patterns import PATTERNS, Pattern, ReplayFileError, make_pattern
from locality.population.population import PatternExhausted, Population, RunStats, StepResult
from locality.population.schedulers import SCHEDULERS

__all__ = [
    "PATTERNS",
    "Pattern",
    "PatternExhausted",
    "Population",
    "ReplayFileError",
    "RunStats",
    "SCHEDULERS",
    "StepResult",
    "make_pattern",
]
