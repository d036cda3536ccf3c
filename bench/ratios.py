"""Ratios that do not move with the machine's load: measured interleaved, a median with its spread.

A ratio of two passes timed minutes apart measures the neighbours as much as the loaders, so ``make
bench`` measures each pass ``bench.repeats`` times, each right before its raw baseline and its peer
(A B C A B C ...); a ratio is the median of the repeats' ratios, with their minimum and maximum. A
spread over :data:`UNSTABLE_SPREAD` says the machine was busy: such a ratio is flagged, never
presented as a finding. ``farm-bench``'s paired medians follow the same idea.
"""

from __future__ import annotations

import math
import statistics

#: The ratios a results row carries, each the row's own (one repeat).
RATIOS = ("ratio_to_baseline", "ratio_to_peer")

#: A ratio whose repeats spread (max - min) by more than this share of their median is
#: flagged "unstable: the machine was busy": two passes of the same loader a few seconds apart
#: differ by a few percent on a quiet machine; more means something else took the cores.
UNSTABLE_SPREAD = 0.10


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """``(median, min, max)`` of the finite ``values``; NaNs when there are none."""
    finite = [v for v in values if v == v and not math.isinf(v)]
    if not finite:
        return math.nan, math.nan, math.nan
    return statistics.median(finite), min(finite), max(finite)


def unstable(median: float, low: float, high: float) -> bool:
    """Whether repeats from ``low`` to ``high`` spread over :data:`UNSTABLE_SPREAD` x ``median``."""
    return median == median and median > 0 and (high - low) / median > UNSTABLE_SPREAD


def summarize(results: list[dict]) -> None:
    """Add to every row the summary of its pass's repeats (same ``config`` and ``pass``).

    For each of :data:`RATIOS`: ``<ratio>_median``, ``_min``, ``_max``; and ``unstable``, the ratios
    (``baseline``, ``peer``) the reports give whose repeats spread more than :data:`UNSTABLE_SPREAD`
    (``""``: none; the ratio to the baseline counts for ``read`` rows only).
    """
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        if not row.get("error"):
            groups.setdefault((row["config"], row["pass"]), []).append(row)
    for rows in groups.values():
        flags = []
        summary = {}
        for ratio in RATIOS:
            median, low, high = median_spread([r.get(ratio, math.nan) for r in rows])
            summary.update({f"{ratio}_median": median, f"{ratio}_min": low, f"{ratio}_max": high})
            reported = ratio != "ratio_to_baseline" or rows[0].get("mode", "read") == "read"
            if reported and unstable(median, low, high):
                flags.append(ratio.removeprefix("ratio_to_"))
        for row in rows:
            row.update(summary, unstable=";".join(flags))


def representative(rows: list[dict]) -> dict:
    """The repeat that stands for a pass: the median samples/s (lower middle of an even count)."""
    ordered = sorted(rows, key=lambda r: r.get("samples_per_s", 0.0))
    return ordered[(len(ordered) - 1) // 2]


def fmt_ratio(value: float, digits: int = 2) -> str:
    """A ratio with ``digits`` decimals, or under 0.1 significant digits: ``0.83``, ``0.0021``."""
    return f"{value:.{digits}f}" if abs(value) >= 0.1 else f"{value:.{digits}g}"


def ratio_text(row: dict, ratio: str, digits: int = 2) -> str:
    """A ratio for tables: ``0.93``, or ``0.93 (0.90-0.95)`` over several repeats.

    ``!`` appended when unstable, ``–`` when not measured; under 0.1, two significant digits.
    """
    median = row.get(f"{ratio}_median", row.get(ratio, math.nan))
    if median is None or median != median:
        return "–"
    low, high = row.get(f"{ratio}_min", median), row.get(f"{ratio}_max", median)
    text = fmt_ratio(median, digits)
    if high - low > 0:
        text += f" ({fmt_ratio(low, digits)}-{fmt_ratio(high, digits)})"
    if unstable(median, low, high):
        text += "!"
    return text


def passes(results: list[dict]) -> list[dict]:
    """One row per pass, in run order: its :func:`representative`, or a failed pass's error row."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        groups.setdefault((row["config"], row.get("pass", 0)), []).append(row)
    picked = []
    for rows in groups.values():
        ok = [r for r in rows if not r.get("error")]
        picked.append(representative(ok) if ok else rows[0])
    return picked
