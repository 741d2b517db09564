"""What `locality beam` runs: the validated config, its constants, and the harness schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from locality.errors import InvalidArgument, LocalityError

ESCRIPT_NAME = "population.escript"
INSTALL_HINT = "install the Erlang VM: apt-get install erlang-nox"
PATTERNS = ("uniform", "zipf", "sheet")
STATE_INITS = ("heap", "bif")  # how a worker builds its state (see the escript)
# Who draws the activated ids: the VM (rand exsss, in the escript) or the Python
# harness's own pattern generator (locality.population), sent to the VM before the steps.
SCHEDULES = ("vm", "harness")
# A fresh process on 64-bit OTP: 327 words (Erlang efficiency guide, "Processes").
DOCUMENTED_FRESH_PROCESS_BYTES = 327 * 8
DEFAULT_WINDOWS = (1.0, 10.0, 60.0)
LATENCY_SAMPLE_MAX = 100_000


class BeamError(LocalityError):
    """The Erlang VM failed to start, answer, or reported an error."""


@dataclass(frozen=True)
class BeamConfig:
    """What `locality beam` runs. Validated on construction."""

    processes: int = 1_000_000
    pattern: str = "sheet"
    p: float = 0.01
    steps: int | None = None
    duration: float | None = None
    interval: float = 1.0
    hibernate: bool = False
    min_heap_size: int = 0
    seed: int = 0
    radius: int = 3
    zipf_s: float = 1.1
    track_refs: bool = False
    pageout_watch: bool = False
    windows: tuple[float, ...] = DEFAULT_WINDOWS
    report_ids: bool = False
    state_init: str = "heap"
    schedule: str = "vm"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise InvalidArgument(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.state_init not in STATE_INITS:
            raise InvalidArgument(f"state_init must be one of {', '.join(STATE_INITS)}, not {self.state_init!r}")
        if self.processes < 1:
            raise InvalidArgument(f"processes must be >= 1, not {self.processes}")
        if self.pattern not in PATTERNS:
            raise InvalidArgument(f"pattern must be one of {', '.join(PATTERNS)}, not {self.pattern!r}")
        if not 0 < self.p <= 1:
            raise InvalidArgument(f"p must be in (0, 1], not {self.p}")
        if self.interval <= 0:
            raise InvalidArgument(f"interval must be > 0 seconds, not {self.interval}")
        if self.steps is not None and self.duration is not None:
            raise InvalidArgument("give --steps or --duration, not both")
        if self.steps is not None and self.steps < 0:
            raise InvalidArgument(f"steps must be >= 0, not {self.steps}")
        if self.duration is not None and self.duration <= 0:
            raise InvalidArgument(f"duration must be > 0 seconds, not {self.duration}")
        if self.min_heap_size < 0:
            raise InvalidArgument(f"min_heap_size must be >= 0 words, not {self.min_heap_size}")
        if self.radius < 0:
            raise InvalidArgument(f"radius must be >= 0, not {self.radius}")
        if not self.windows or any(w <= 0 for w in self.windows):
            raise InvalidArgument(f"windows must be positive seconds, not {self.windows}")

    @property
    def n_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        if self.duration is not None:
            return max(1, math.ceil(self.duration / self.interval))
        # Default: long enough for the largest window plus one interval.
        return max(1, math.ceil(max(self.windows) / self.interval) + 1)

    def escript_args(self) -> list[str]:
        return [
            f"n={self.processes}", f"pattern={self.pattern}", f"p={self.p!r}", f"seed={self.seed}",
            f"interval_ms={max(1, round(self.interval * 1000))}",
            f"hibernate={str(self.hibernate).lower()}", f"min_heap_size={self.min_heap_size}",
            f"radius={self.radius}", f"zipf_s={self.zipf_s!r}", f"report_ids={str(self.report_ids).lower()}",
            f"state_init={self.state_init}",
        ]



def harness_schedule(cfg: BeamConfig) -> list[np.ndarray]:
    """The ids the Python harness's pattern activates in each of the run's steps (same seed)."""
    import itertools

    from locality.population import make_pattern

    params: dict[str, Any] = {"p": cfg.p}
    if cfg.pattern == "zipf":
        params["s"] = cfg.zipf_s
    elif cfg.pattern == "sheet":
        params["radius"] = float(cfg.radius)
    pattern = make_pattern(cfg.pattern, cfg.processes, seed=cfg.seed, **params)
    return list(itertools.islice(pattern.steps(), cfg.n_steps))

