"""Techniques for the VM's locality: each one a named set of VM flags and escript options.

A technique changes one thing about how the population lives in the VM. On
this side it is one registry entry (what it changes, the VM flags, the
escript options as `BeamConfig` fields, and what it should do to locality and
why); on the Erlang side it is one file beside population.escript
(`technique_*.hrl`; the allocator technique is VM flags only). Adding a
technique means adding one entry here and, if it needs code in the VM, one
file there. `locality beam compare --help` and experiments/beam/README.md
print this registry.

Techniques compose with "+" (`state-off-heap+spawn-order`) when they set
different knobs; the allocator technique is one entry per flag set
(`allocator:aobf`, ...), and `allocator` alone means all of them.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from locality.errors import InvalidArgument
from locality.experiment.beam.config import BeamConfig


# Columns per grouped process. With the states on the group's heap, a woken group rewrites
# its tuple and collects its heap, so smaller groups touch less (200k, 21 s: 10-s WSS 88.9
# MiB at 64, 108.9 at 256). With the states off-heap (grouped+state-off-heap) the group
# holds one slot number, so one process struct and heap per 16x16 tile of the sheet (in
# spawn order; the Python grouped layout's tile) beats one per 8x8 (1M: 63.5 vs 81.9 MiB).
GROUP_SIZE = 64
GROUP_SIZE_OFF_HEAP = 256


@dataclass(frozen=True)
class Technique:
    name: str
    changes: str  # what it changes
    mechanism: str  # which VM flags or code
    expected: str  # what it should do to locality, and why
    vm_flags: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)  # BeamConfig fields

    def config(self, base: BeamConfig) -> BeamConfig:
        """``base`` with this technique's knobs set (the workload stays ``base``'s)."""
        return dataclasses.replace(base, technique=self.name, vm_flags=base.vm_flags + self.vm_flags, **self.options)


# Flag sets of the allocator technique, each run and measured on its own. They act on
# eheap_alloc (+MH...), the allocator of process heaps: the part of a process that grows.
ALLOCATOR_SETS: dict[str, tuple[str, ...]] = {
    # Address-order best fit: a freed heap block is refilled by the best-fitting request,
    # lowest address first, so live heaps stay packed at the bottom of the carriers.
    "aobf": ("+MHas", "aobf"),
    # Plain best fit (no address order): the classic fragmentation-minimising strategy.
    "bf": ("+MHas", "bf"),
    # Small multiblock carriers (64 KiB to 1 MiB instead of 512 KiB to 5 MiB) and carrier
    # abandonment off: more, smaller carriers, each emptied and unmapped sooner.
    "small-carriers": ("+MHsmbcs", "64", "+MHlmbcs", "1024", "+MHacul", "0"),
}

_BASE: tuple[Technique, ...] = (
    Technique(
        "default",
        "nothing (the baseline): one process per column, its state on its own heap, the VM's default flags",
        "population.escript as is (technique_process.hrl, mode plain)",
        "the baseline: a process is about 2.6 KB (a 233-word heap plus the process struct), so a page holds "
        "1.5 processes and waking a column touches pages shared with idle neighbours in spawn (id) order",
    ),
    Technique(
        "hibernate",
        "how idle processes wait: hibernated",
        "erlang:hibernate/3 after spawn and after every activation (technique_process.hrl, mode hibernate)",
        "smaller processes (heap compacted to the live state, stack dropped), so more of them per page; but a "
        "wake-up allocates a new heap wherever the allocator finds room, which scatters hot heaps",
        options={"hibernate": True},
    ),
    Technique(
        "heap-tuned",
        "every process's heap, sized to the state and kept there",
        "VM flag +hms 38 (default heap 38 words instead of 233), spawn option fullsweep_after 0, and "
        "erlang:garbage_collect() after every activation (technique_process.hrl, mode gc)",
        "fewer bytes per process than default (the heap shrinks from 233 words to the 38-90 the state needs), "
        "so an activation's pages hold more columns; each activation pays a GC",
        vm_flags=("+hms", "38"), options={"fullsweep_after": 0, "gc_after": True},
    ),
    Technique(
        "spawn-order",
        "the spawn order: along the sheet's Hilbert curve instead of by id",
        "locality sends the `clustered` layout's order (locality.layouts.clustered.hilbert_order) to the VM "
        "before spawn (technique_spawn_order.hrl); ids are unchanged",
        "heaps and process structs are allocated in spawn order, so columns that fire together (neighbours on "
        "the sheet) share carriers and pages: fewer pages per burst",
        options={"order": "hilbert"},
    ),
    Technique(
        "migrate-hot",
        "where hot processes live: every 10 steps, each process activated since the last migration "
        "re-creates itself",
        "the process spawns a successor holding its state and hands over its entry in the coordinator's "
        "table, then ends (technique_migrate_hot.hrl); the migration's time is the relocation cost",
        "the VM analogue of `compacting`: hot heaps are allocated together, in fresh blocks, so the next "
        "window's activations touch fewer pages; costs a spawn and a state copy per hot process",
        options={"migrate_every": 10},
    ),
    Technique(
        "grouped",
        "what a process is: 64 columns per process, their states one tuple, updated when any of its "
        "columns is activated (256 columns when their states are off-heap)",
        "group_worker/1 (technique_grouped.hrl); groups are 64 consecutive ids, rows of the sheet, or "
        "consecutive columns of the spawn order (with spawn-order, 8x8 or 16x16 Hilbert tiles)",
        "far fewer processes (a process struct and heap overhead per 64 columns instead of per column), so "
        "fewer bytes per column; an activation touches its group's whole heap when the group collects garbage",
        options={"group_size": GROUP_SIZE},
    ),
    Technique(
        "state-off-heap",
        "where column state lives: in one atomics array, not on the processes' heaps; the processes hold "
        "only their id",
        "atomics:new(10 N) reached through persistent_term; processes wait hibernated "
        "(technique_state_off_heap.hrl)",
        "the state of neighbouring columns is contiguous (80 bytes each, by id), processes shrink to the "
        "process struct and a few heap words, and an activation allocates nothing on the heap",
        options={"state_store": "atomics"},
    ),
)


def allocator_technique(name: str, flags: tuple[str, ...]) -> Technique:
    return Technique(
        f"allocator:{name}",
        f"the process-heap allocator's strategy and carriers: {' '.join(flags)}",
        f"VM flags {' '.join(flags)} (erts_alloc; eheap_alloc is +MH...)",
        "a placement policy that keeps live heaps packed, and carriers that empty sooner, leave fewer "
        "partly used pages for idle processes to pin",
        vm_flags=flags,
    )


def parse_flag_set(text: str) -> tuple[str, tuple[str, ...]]:
    """'NAME=+MHas aobf +MHlmbcs 1024' -> (NAME, flags). Only +M (memory allocator) flags."""
    name, sep, flags_text = text.partition("=")
    name = name.strip()
    flags = tuple(shlex.split(flags_text)) if sep else ()
    if not name or not name.replace("-", "").replace("_", "").isalnum() or not flags:
        raise InvalidArgument(f"--allocator {text!r}: expected NAME=FLAGS", "e.g. --allocator 'mine=+MHas aobf'")
    if not flags[0].startswith("+M") or any(f.startswith(("-", "+")) and not f.startswith("+M") for f in flags):
        raise InvalidArgument(f"--allocator {name}: only memory allocator flags (+M...) are allowed, not {' '.join(flags)}",
                              "see the erts_alloc manual, e.g. +MHas aobf")
    return name, flags


# Compositions run by `all` too: the techniques that each shrink a different part of an
# activation's footprint, together (64-column Hilbert tiles, state in atomics by spawn slot).
COMPOSITES = ("grouped+state-off-heap+spawn-order",)


def registry(extra_allocator_sets: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Technique]:
    """Every technique by name: the base ones, one per allocator flag set, then the composites."""
    sets = {**ALLOCATOR_SETS, **(extra_allocator_sets or {})}
    out = {t.name: t for t in _BASE}
    out.update({f"allocator:{n}": allocator_technique(n, f) for n, f in sets.items()})
    out.update({name: compose(out[p] for p in name.split("+")) for name in COMPOSITES})
    return out


def compose(parts: Iterable[Technique]) -> Technique:
    """Several techniques as one, when each sets different knobs."""
    parts = list(parts)
    options: dict[str, Any] = {}
    for t in parts:
        for key, value in t.options.items():
            if key in options and options[key] != value:
                raise InvalidArgument(f"{'+'.join(p.name for p in parts)}: two techniques set {key}",
                                      "combine techniques that change different things")
            options[key] = value
    if options.get("group_size", 1) > 1 and (options.get("hibernate") or options.get("migrate_every")):
        raise InvalidArgument(f"{'+'.join(p.name for p in parts)}: grouped cannot be combined with that",
                              "grouped changes what a process is; combine it with spawn-order, state-off-heap "
                              "or allocator")
    if options.get("group_size", 1) > 1 and options.get("state_store", "heap") != "heap":
        # A group whose columns' state lives off its heap holds only their first slot: larger
        # groups cost nothing per activation and mean fewer process structs and heaps woken.
        options["group_size"] = GROUP_SIZE_OFF_HEAP
    if options.get("migrate_every") and options.get("state_store", "heap") != "heap":
        raise InvalidArgument(f"{'+'.join(p.name for p in parts)}: migrate-hot moves heap state only",
                              "run migrate-hot without state-off-heap")
    return Technique(
        "+".join(t.name for t in parts), "; ".join(t.changes for t in parts), "; ".join(t.mechanism for t in parts),
        "; ".join(t.expected for t in parts), tuple(f for t in parts for f in t.vm_flags), options,
    )


def resolve(text: str, extra_allocator_sets: Mapping[str, tuple[str, ...]] | None = None) -> list[Technique]:
    """'all' or 'T1,T2+T3,...' -> techniques in order; 'allocator' stands for every flag set."""
    known = registry(extra_allocator_sets)
    allocators = [n for n in known if n.startswith("allocator:")]
    if text.strip() == "all":
        return list(known.values())
    chosen: list[Technique] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        if item == "allocator":
            chosen += [known[n] for n in allocators]
            continue
        parts = [p.strip() for p in item.split("+")]
        unknown = [p for p in parts if p not in known]
        if unknown:
            raise InvalidArgument(f"unknown technique {', '.join(map(repr, unknown))}",
                                  f"allowed: all, allocator, or a comma list of {', '.join(known)}")
        chosen.append(known[parts[0]] if len(parts) == 1 else compose(known[p] for p in parts))
    if not chosen:
        raise InvalidArgument(f"--techniques {text!r} names no technique", "e.g. --techniques all")
    names = [t.name for t in chosen]
    if len(set(names)) != len(names):
        raise InvalidArgument("--techniques names a technique twice", "name each once")
    return chosen


def describe(techniques: Iterable[Technique], width: int = 78) -> str:
    """Plain text, one block per technique (for --help and the README)."""
    import textwrap

    blocks = []
    for t in techniques:
        lines = [t.name]
        for label, text in (("changes", t.changes), ("how", t.mechanism), ("expected", t.expected)):
            lines += textwrap.wrap(f"{label}: {text}.", width, initial_indent="  ", subsequent_indent="    ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
