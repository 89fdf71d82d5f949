"""Compare a measured organ sequence with a reference one: alignment with missed and extra organs.

    from s3dgs.sequence import align_sequences, load_reference
    ref = load_reference("ground_truth/angles_internodes.json")   # ROMI's file: radians, lengths
    res = align_sequences(angles_deg, internodes, ref["angles_deg"], ref["internodes"])
    res["organs"]  # {"reference", "found", "missed", "extra"}
    res["angle_error_deg_median"], res["internode_error_median"], res["internode_error_pct_of_mean"]

A phyllotaxis sequence of O organs is O - 1 intervals, each a divergence angle (degrees, in
[0, 360)) and an internode (a length). An organ the measurement missed merges two reference
intervals into one measured interval (its angle is their sum modulo 360, its internode their sum);
a spurious organ splits one reference interval into two measured ones. So the alignment is a dynamic
time warping over the intervals whose steps are:

- ``match``: one measured interval against one reference interval;
- ``missed``: one measured interval against 2..``max_merge`` consecutive reference intervals
  (summed), each extra reference interval a missed organ;
- ``extra``: 2..``max_merge`` consecutive measured intervals (summed) against one reference
  interval, each extra measured interval a spurious organ;
- ``skip``: a reference or measured interval at either end left unmatched (the sequences start or
  end at different organs): one missed or extra organ each.

Cost of comparing a measured (a, l) with a reference (a', l'): ``angle_weight`` x circular angle
difference / 180 degrees + (1 - ``angle_weight``) x |l - l'| / the reference's mean internode; each
missed or extra organ adds ``gap_penalty``. The alignment minimises the total (the same family of
steps as ROMI's evaluation, which aligns with merges and splits of intervals; written here from that
description: no kept library aligns circular-and-linear sequences with merges and splits).

In code, ``align_sequences`` reads as its steps: ``_checked_sequences`` (inputs as arrays),
``_dtw`` (the table of least costs, each cell's cheapest step by ``_best_step``, the cost of one
comparison by ``_interval_cost``), ``_backtrack`` (the steps, first to last) and ``_score_steps``
(errors and counts of missed and extra organs).

Errors are medians over the ``match`` steps (one-to-one intervals): absolute circular angle error
in degrees; absolute internode error in length units and as a percentage of the reference's mean
internode. With ``internode_scale`` the reference internodes are multiplied by it first (measured
units per reference unit).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from s3dgs.errors import S3dgsError, UsageError

__all__ = ["align_sequences", "load_reference", "circular_difference_deg", "GOLDEN_ANGLE_DEG"]

GOLDEN_ANGLE_DEG = 360.0 * (1.0 - (math.sqrt(5.0) - 1.0) / 2.0)  # 137.507...


def circular_difference_deg(a, b) -> np.ndarray:
    """|a - b| on the circle, degrees in [0, 180]: 359 vs 1 -> 2. a, b: arrays of degrees."""
    d = np.mod(np.asarray(a, np.float64) - np.asarray(b, np.float64), 360.0)
    return np.minimum(d, 360.0 - d)


def load_reference(path) -> dict:
    """A ROMI ``angles_internodes.json`` ({"angles": radians [O - 1], "internodes": [O - 1]}).
    Returns {"angles_deg", "internodes", "path"}. Raises S3dgsError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--reference {p}: file not found (expected ROMI's angles_internodes.json)")
    try:
        d = json.loads(p.read_text())
        ang = np.degrees(np.asarray(d["angles"], np.float64)).reshape(-1) % 360.0
        inter = np.asarray(d["internodes"], np.float64).reshape(-1)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise S3dgsError(f"{p}: not a ROMI angles_internodes.json ({exc}); expected "
                         '{"angles": [radians, ...], "internodes": [lengths, ...]}') from exc
    if len(ang) != len(inter) or len(ang) == 0 or not (np.isfinite(ang).all() and np.isfinite(inter).all()):
        raise S3dgsError(f"{p}: 'angles' ({len(ang)}) and 'internodes' ({len(inter)}) must be equally "
                         "long, non-empty lists of finite numbers")
    return {"angles_deg": ang.tolist(), "internodes": inter.tolist(), "path": str(p)}


def align_sequences(angles_deg: Sequence[float | None], internodes: Sequence[float],
                    ref_angles_deg: Sequence[float], ref_internodes: Sequence[float], *,
                    gap_penalty: float = 0.5, angle_weight: float = 0.5, max_merge: int = 3,
                    internode_scale: float = 1.0) -> dict:
    """Align a measured interval sequence with a reference one (see the module docstring).

    Args:
        angles_deg [M], internodes [M]: the measured divergence angles (degrees; None or NaN when
            not measured: such an interval is compared on its internode only) and internodes.
        ref_angles_deg [R], ref_internodes [R]: the reference's.
        gap_penalty: cost of each missed or extra organ.
        angle_weight: weight of the angle term (the internode term gets 1 - angle_weight).
        max_merge: most intervals one step may sum (max_merge - 1 organs missed or extra in a row).
        internode_scale: the reference internodes are multiplied by it (measured units per
            reference unit).

    Returns:
        {"alignment": [{"type", "measured": [indices], "reference": [indices], "angle_error_deg",
        "internode_error"}], "organs": {"reference", "measured", "found", "missed", "extra"},
        "matched_intervals", "angle_error_deg_median", "internode_error_median",
        "internode_error_pct_of_mean", "reference_mean_internode", "cost", "parameters"}.
    """
    a, l, ra, rl = _checked_sequences(angles_deg, internodes, ref_angles_deg, ref_internodes,
                                      gap_penalty=gap_penalty, angle_weight=angle_weight, max_merge=max_merge,
                                      internode_scale=internode_scale)
    M, R = len(a), len(ra)
    mean_ref = float(np.mean(rl))
    norm_l = mean_ref if mean_ref > 0 else 1.0
    D, back = _dtw(a, l, ra, rl, gap_penalty=gap_penalty, angle_weight=angle_weight, max_merge=max_merge,
                   norm_l=norm_l)
    steps = _backtrack(back, M, R)
    missed, extra, a_err, l_err = _score_steps(steps, a, l, ra, rl)
    # an unmatched interval at an end is one organ; both ends of a sequence with no match at all:
    # every organ of the other is missed / extra
    n_ref, n_meas = R + 1, (M + 1 if M > 0 else 0)
    found = n_ref - missed
    if M == 0:
        found, missed = 0, n_ref
    med_a = float(np.median(a_err)) if a_err else None
    med_l = float(np.median(l_err)) if l_err else None
    return {
        "alignment": steps,
        "organs": {"reference": n_ref, "measured": n_meas, "found": int(found), "missed": int(missed),
                   "extra": int(extra)},
        "matched_intervals": len(l_err),
        "angle_error_deg_median": med_a,
        "internode_error_median": med_l,
        "internode_error_pct_of_mean": (100.0 * med_l / mean_ref if med_l is not None and mean_ref > 0
                                        else None),
        "reference_mean_internode": mean_ref,
        "cost": float(D[M, R]),
        "parameters": {"gap_penalty": gap_penalty, "angle_weight": angle_weight, "max_merge": max_merge,
                       "internode_scale": internode_scale},
    }


def _checked_sequences(angles_deg, internodes, ref_angles_deg, ref_internodes, *, gap_penalty: float,
                       angle_weight: float, max_merge: int, internode_scale: float):
    """The sequences as arrays: measured angles a [M] (None -> NaN), internodes l [M], reference
    angles ra [R] (mod 360) and internodes rl [R] (times internode_scale). Raises UsageError for
    sequences of unequal lengths, an empty reference, or parameters out of range."""
    a = np.array([np.nan if v is None else float(v) for v in angles_deg], np.float64)
    l = np.asarray(internodes, np.float64).reshape(-1)
    ra = np.asarray(ref_angles_deg, np.float64).reshape(-1) % 360.0
    rl = np.asarray(ref_internodes, np.float64).reshape(-1) * float(internode_scale)
    if len(a) != len(l):
        raise UsageError(f"{len(a)} measured angles but {len(l)} internodes")
    if len(ra) != len(rl) or len(ra) == 0:
        raise UsageError(f"the reference needs as many angles ({len(ra)}) as internodes ({len(rl)}), "
                         "at least one")
    if not (0.0 <= angle_weight <= 1.0) or gap_penalty < 0 or max_merge < 1:
        raise UsageError("angle_weight must lie in [0, 1], gap_penalty >= 0, max_merge >= 1")
    return a, l, ra, rl


def _interval_cost(ang: float, length: float, rang: float, rlength: float, angle_weight: float,
                   norm_l: float) -> float:
    """Cost of a measured interval (angle ang, degrees, NaN when not measured; internode length)
    against a reference one (rang, rlength): angle_weight x circular angle difference / 180 +
    (1 - angle_weight) x |length - rlength| / norm_l; an unmeasured angle costs half the angle
    weight (an average angle error)."""
    da = circular_difference_deg(ang, rang) if math.isfinite(ang) else None
    c = (1.0 - angle_weight) * abs(length - rlength) / norm_l
    if da is not None:
        c += angle_weight * float(da) / 180.0
    else:
        c += angle_weight * 0.5  # not measured: an average angle error's cost
    return c


def _best_step(D: np.ndarray, i: int, j: int, a, l, ra, rl, *, gap_penalty: float, angle_weight: float,
               max_merge: int, norm_l: float) -> tuple[float, tuple[int, int, str] | None]:
    """The cheapest step into cell (i, j) of the DTW table D [M + 1, R + 1] (cells before it
    filled) over the measured a, l [M] and reference ra, rl [R] intervals: a skip at either end,
    1 measured : k reference ("match" for k = 1, else "missed"), or k measured : 1 reference
    ("extra"), k <= max_merge. Returns (its total cost, (previous i, previous j, kind)), or
    (inf, None) when no step reaches the cell."""
    M, R = len(a), len(ra)
    best, arg = float("inf"), None
    # skips at the ends only: the first row/column (leading) or the last (trailing)
    if i > 0 and (j == 0 or j == R) and D[i - 1, j] + gap_penalty < best:
        best, arg = D[i - 1, j] + gap_penalty, (i - 1, j, "skip_measured")
    if j > 0 and (i == 0 or i == M) and D[i, j - 1] + gap_penalty < best:
        best, arg = D[i, j - 1] + gap_penalty, (i, j - 1, "skip_reference")
    if i > 0 and j > 0:
        for k in range(1, min(max_merge, j) + 1):  # 1 measured : k reference
            if not np.isfinite(D[i - 1, j - k]):
                continue
            c = D[i - 1, j - k] + _interval_cost(a[i - 1], l[i - 1], ra[j - k:j].sum() % 360.0,
                                                 rl[j - k:j].sum(), angle_weight, norm_l) \
                + gap_penalty * (k - 1)
            if c < best:
                best, arg = c, (i - 1, j - k, "match" if k == 1 else "missed")
        for k in range(2, min(max_merge, i) + 1):  # k measured : 1 reference
            if not np.isfinite(D[i - k, j - 1]):
                continue
            am = a[i - k:i]
            ang = float(np.nansum(am) % 360.0) if np.isfinite(am).all() else float("nan")
            c = D[i - k, j - 1] + _interval_cost(ang, l[i - k:i].sum(), ra[j - 1], rl[j - 1], angle_weight,
                                                 norm_l) + gap_penalty * (k - 1)
            if c < best:
                best, arg = c, (i - k, j - 1, "extra")
    return best, arg


def _dtw(a, l, ra, rl, *, gap_penalty: float, angle_weight: float, max_merge: int,
         norm_l: float) -> tuple[np.ndarray, dict[tuple[int, int], tuple[int, int, str]]]:
    """The dynamic time warping of the measured intervals a, l [M] against the reference ra, rl
    [R] (steps: `_best_step`). Returns (the table of least total costs D [M + 1, R + 1], the
    back-pointers {(i, j): (previous i, previous j, kind of step)})."""
    M, R = len(a), len(ra)
    D = np.full((M + 1, R + 1), float("inf"))
    back: dict[tuple[int, int], tuple[int, int, str]] = {}
    D[0, 0] = 0.0
    for i in range(M + 1):
        for j in range(R + 1):
            if i == 0 and j == 0:
                continue
            best, arg = _best_step(D, i, j, a, l, ra, rl, gap_penalty=gap_penalty, angle_weight=angle_weight,
                                   max_merge=max_merge, norm_l=norm_l)
            D[i, j] = best
            if arg is not None:
                back[(i, j)] = arg
    return D, back


def _backtrack(back: dict[tuple[int, int], tuple[int, int, str]], M: int, R: int) -> list[dict]:
    """The alignment's steps, first to last, from the back-pointers of `_dtw`: each {"type",
    "measured": [indices into the M measured intervals], "reference": [indices into the R]}."""
    steps = []
    i, j = M, R
    while (i, j) != (0, 0):
        pi, pj, kind = back[(i, j)]
        steps.append({"type": kind, "measured": list(range(pi, i)), "reference": list(range(pj, j))})
        i, j = pi, pj
    steps.reverse()
    return steps


def _score_steps(steps: list[dict], a, l, ra, rl) -> tuple[int, int, list[float], list[float]]:
    """Adds "angle_error_deg" and "internode_error" (summed intervals, measured - reference; None
    where not comparable) to each step, and counts. Returns (missed organs, extra organs, absolute
    angle errors and absolute internode errors of the "match" steps)."""
    missed = extra = 0
    a_err, l_err = [], []
    for st in steps:
        mi, rj = st["measured"], st["reference"]
        st["angle_error_deg"] = st["internode_error"] = None
        if st["type"] == "skip_measured":
            extra += 1
            continue
        if st["type"] == "skip_reference":
            missed += 1
            continue
        missed += len(rj) - 1
        extra += len(mi) - 1
        am = a[mi]
        ang = float(np.sum(am) % 360.0) if np.isfinite(am).all() else float("nan")
        rang = float(ra[rj].sum() % 360.0)
        le = float(l[mi].sum() - rl[rj].sum())
        st["internode_error"] = le
        if math.isfinite(ang):
            st["angle_error_deg"] = float(circular_difference_deg(ang, rang))
        if st["type"] == "match":
            l_err.append(abs(le))
            if math.isfinite(ang):
                a_err.append(st["angle_error_deg"])
    return missed, extra, a_err, l_err
