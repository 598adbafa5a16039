"""Phrasing numbers for people: a difference with its CI, a change, a distance from a band.

The verdict always comes from the interval, never from the point estimate alone: a CI that
includes 0 says "no detectable change", whichever side the estimate falls on.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = [
    "attack_name",
    "fmt",
    "fmt_signed",
    "format_ci",
    "ci_direction",
    "phrase_difference",
    "phrase_change",
    "phrase_correlation",
    "verdict_label",
    "FINDINGS_NOTE",
    "STATUS_LABELS",
]

def attack_name(a: str) -> str:
    """The attack's display name from the registry ("SimA"); an unknown name as given."""
    from ..attacks import display_name

    return display_name(a)


def _ok(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def fmt(x, digits: int = 3) -> str:
    """0.905 → "0.905"; None/NaN → "n/a"."""
    return f"{x:.{digits}f}" if _ok(x) else "n/a"


def fmt_signed(x, digits: int = 3) -> str:
    """0.012 → "+0.012"; None/NaN → "n/a"."""
    return f"{x:+.{digits}f}" if _ok(x) else "n/a"


def format_ci(ci: Sequence[float] | None, digits: int = 3, signed: bool = True, level: float = 0.95) -> str:
    """[0.004, 0.020] → "95% CI +0.004 to +0.020"."""
    if ci is None or len(ci) != 2 or not (_ok(ci[0]) and _ok(ci[1])):
        return f"{level:.0%} CI n/a"
    f = fmt_signed if signed else fmt
    return f"{level:.0%} CI {f(ci[0], digits)} to {f(ci[1], digits)}"


def ci_direction(ci: Sequence[float] | None) -> int | None:
    """+1 if the CI lies above 0, −1 if below, 0 if it includes 0, None if it is missing."""
    if ci is None or len(ci) != 2 or not (_ok(ci[0]) and _ok(ci[1])):
        return None
    if ci[0] > 0:
        return 1
    if ci[1] < 0:
        return -1
    return 0


def phrase_difference(
    estimate,
    ci,
    up: str = "the filter helps",
    down: str = "the filter hurts",
    none: str = "no detectable change",
    digits: int = 3,
    level: float = 0.95,
) -> str:
    """"+0.012 (95% CI +0.004 to +0.020): the filter helps" or "…: CI includes 0, no detectable change"."""
    d = ci_direction(ci)
    head = f"{fmt_signed(estimate, digits)} ({format_ci(ci, digits, level=level)})"
    if d is None:
        return f"{head}: no CI, cannot judge"
    if d == 0:
        return f"{head}: CI includes 0, {none}"
    return f"{head}: {up if d > 0 else down}"


def phrase_change(before, after, ci=None, name: str = "AUC", digits: int = 3) -> str:
    """"AUC 0.894 → 0.905 (+0.011, 95% CI +0.008 to +0.014)"."""
    diff = after - before if _ok(before) and _ok(after) else None
    tail = fmt_signed(diff, digits) + (f", {format_ci(ci, digits)}" if ci is not None else "")
    return f"{name} {fmt(before, digits)} → {fmt(after, digits)} ({tail})"


def phrase_correlation(r, ci, what: str = "high-frequency energy", digits: int = 2) -> str:
    """"r = +0.72 (95% CI +0.65 to +0.78) with high-frequency energy: positive"."""
    d = ci_direction(ci)
    word = {1: "positive", -1: "negative", 0: "CI includes 0, no detectable correlation", None: "no CI"}[d]
    return f"r = {fmt_signed(r, digits)} ({format_ci(ci, digits)}) with {what}: {word}"


STATUS_LABELS = {"shows": "shows", "opposite": "shows the opposite", "inconclusive": "inconclusive",
                 "not_enough_samples": "not enough samples", "not_applicable": "not applicable"}


FINDINGS_NOTE = (
    "Each verdict is a two-sided test on the calibrated protocol's evaluation fold (every row's t chosen on the "
    "calibration fold, controls selected like the treatment; AUC differences with DeLong's standard error). All "
    "verdicts of the report are one family, Holm-adjusted to a 5% family-wise error rate: “shows” when the adjusted "
    "p is below 5% in the paper's direction (a false “shows” has probability at most 2.5%), “shows the opposite” in "
    "the other direction, “inconclusive” otherwise. Numbers under the paper protocol are optimistic and not judged.")


def verdict_label(finding) -> str:
    """A finding's verdict as a word for tables and badges: its `status` (docs/verdicts.md), or
    for an older results.json its `shows` (True / False / None)."""
    if isinstance(finding, dict):
        if finding.get("status") in STATUS_LABELS:
            return STATUS_LABELS[finding["status"]]
        finding = finding.get("shows")
    return {True: "shows", False: "shows the opposite"}.get(finding, "inconclusive")
