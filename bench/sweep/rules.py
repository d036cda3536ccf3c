"""MLPerf Storage v3.0's rules for a training result, checked for a sweep.

``sweep.rules: quick`` (the default) states the rules a sweep does not meet and answers all the
same; ``closed`` refuses to call a sweep a result unless every rule that applies holds: before
anything is generated or measured (:func:`before_rules`), then on what was measured
(:func:`after_rules`).

Sources (repository ``mlcommons/storage``, tag ``v3.0``): ``Rules.md`` (section numbers below),
``mlpstorage_py/config.py`` (``STEPS_PER_EPOCH``, ``MOST_MEMORY_MULTIPLIER``,
``ACCELERATORS_CLOSED``), ``mlpstorage_py/rules/utils.py`` (``calculate_training_data_size``),
``mlpstorage_py/rules/submission_checkers/training.py`` (``REQUIRED_RUNS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.sweep.workloads import Workload
from training.config import ConfigError

#: Rules.md §3.1.2: the dataset is at least this many times the memory of all client nodes.
MEMORY_MULTIPLE = 5
#: Rules.md §3.1.2: at least this many steps per epoch for every accelerator.
MIN_STEPS_PER_EPOCH = 500
#: Rules.md §2.1.17: a result is 6 consecutive runs, the first a warm-up not reported; the
#: published figures are the means of the other 5 (§3.3.8), each of which must keep the AU.
RUNS = 5
#: Rules.md §3.3.2: the first step of every epoch is left out of the AU (DLIO's
#: ``metric_exclude_start_steps``).
EXCLUDED_FIRST_STEPS = 1
#: Rules.md §3.3.3: "approximately 0.5GB of host memory per simulated accelerator" (read as
#: GiB, the unit mlpstorage counts host memory in).
MEMORY_PER_ACCELERATOR_BYTES = 2**29


class RulesNotMet(ConfigError):
    """``sweep.rules: closed`` and a rule fails before the sweep; the message lists each."""


@dataclass(frozen=True)
class Rule:
    """One rule, checked.

    Attributes:
        name: ``division``, ``memory``, ``steps``, ``first step``, ``runs``, ``cache``.
        met: whether it holds.
        text: one sentence with the figures.
    """

    name: str
    met: bool
    text: str

    def line(self) -> str:
        """The rule as a line of the report: ``- met: ...`` or ``- NOT met: ...``."""
        return f"- {'met' if self.met else 'NOT met'}: {self.text}"


def min_samples(w: Workload, accelerators: int, hosts: int, memory_bytes: int) -> int:
    """The fewest samples MLPerf Storage allows (Rules.md §3.1.2; ``calculate_training_data_size``).

    The larger of :data:`MEMORY_MULTIPLE` x ``memory_bytes`` (all the nodes') in samples and
    :data:`MIN_STEPS_PER_EPOCH` steps of every accelerator; ``hosts`` only names nodes in messages.
    """
    by_memory = math.ceil(MEMORY_MULTIPLE * memory_bytes / w.sample_bytes)
    by_steps = MIN_STEPS_PER_EPOCH * w.batch_size * accelerators
    return max(by_memory, by_steps)


def dataset_rules(
    w: Workload, samples: int, accelerators: int, hosts: int, memory_bytes: int
) -> list[Rule]:
    """The dataset rules (:func:`min_samples`) for ``samples`` of ``w`` read by ``accelerators``."""
    dataset = samples * w.sample_bytes
    memory = MEMORY_MULTIPLE * memory_bytes
    steps = samples // (w.batch_size * max(accelerators, 1))
    return [
        Rule(
            "memory",
            dataset >= memory,
            f"dataset {dataset / 1e9:.3g} GB; MLPerf Storage asks at least {MEMORY_MULTIPLE}x "
            f"the memory of the {hosts} client node(s), {memory / 1e9:.4g} GB "
            f"({min_samples(w, accelerators, hosts, memory_bytes):,} samples)",
        ),
        Rule(
            "steps",
            steps >= MIN_STEPS_PER_EPOCH,
            f"{steps} steps per epoch for each of {accelerators} accelerator(s) at batch "
            f"{w.batch_size}; MLPerf Storage asks at least {MIN_STEPS_PER_EPOCH}",
        ),
    ]


def before_rules(
    w: Workload, samples: int, fewest: int, hosts: int, memory_bytes: int, warmup_steps: int
) -> list[Rule]:
    """The closed rules checkable before a run: profile, dataset at ``fewest``, first step."""
    return [
        Rule(
            "division",
            w.division == "closed",
            f"profile {w.key} is {'a closed' if w.division == 'closed' else 'a whatif'} "
            "workload (closed: retinanet and unet3d on b200 and mi355)",
        ),
        *dataset_rules(w, samples, fewest, hosts, memory_bytes),
        Rule(
            "first step",
            warmup_steps == EXCLUDED_FIRST_STEPS,
            f"{warmup_steps} step(s) left out of every point; MLPerf Storage leaves out the "
            f"first {EXCLUDED_FIRST_STEPS}",
        ),
    ]


def refuse_unmet(rules: list[Rule]) -> None:
    """Raise when a rule is not met.

    Raises:
        RulesNotMet: listing every unmet rule.
    """
    unmet = [r for r in rules if not r.met]
    if unmet:
        raise RulesNotMet(
            "sweep.rules=closed: no result, these MLPerf Storage v3.0 rules are not met:\n"
            + "\n".join(r.line() for r in unmet)
        )


def after_rules(
    w: Workload, runs: list[dict], points: list[dict], answer: int, *, memory_met: bool
) -> list[Rule]:
    """The closed rules on what a search measured.

    :data:`RUNS` runs at the ``answer`` (``runs``, the warm-up excluded), each at or above the AU
    threshold; and no point (``points``: every row of the search) the page cache may have served:
    each read cold (every file evicted before it was read), or the dataset at least
    :data:`MEMORY_MULTIPLE` x the clients' memory (``memory_met``, MLPerf's guard where the cache
    cannot be dropped).
    """
    below = [r for r in runs if r["au"] < w.au_threshold]
    warm = [r for r in points if not str(r["cache"]).startswith("cold (each file")]
    return [
        Rule(
            "runs",
            answer > 0 and len(runs) >= RUNS and not below,
            f"{len(runs)} run(s) at {answer} accelerator(s) after the warm-up run, "
            f"{len(below)} below AU {w.au_threshold:.0%}; MLPerf Storage asks {RUNS}, each at "
            "or above it",
        ),
        Rule(
            "cache",
            not warm or memory_met,
            f"{len(points) - len(warm)} of {len(points)} point(s) read with every file evicted "
            "from the page cache before it was read; the others may have read from memory "
            f"unless the dataset is {MEMORY_MULTIPLE}x the clients' memory",
        ),
    ]
