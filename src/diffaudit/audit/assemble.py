"""Turn the gathered per-sample arrays into the results dict of docs/results-schema.md."""
from __future__ import annotations

import numpy as np

from .plan import (CLASSIFIER_PROTOCOL, NOT_IN_PAPER_PROTOCOL, UNMASKED_REASONS, AuditConfig, MaskId, attack_bank,
                   is_masked, mask_bank, output_kind)
from ..metrics import METRICS, metrics_matrix
from .protocol import calibration_split, summarise_attack, summarise_classifier


def bank_columns(bank: list[MaskId], k: int) -> dict:
    """Column indices of the mask bank for the summary at one k."""
    names = [m.name for m in bank]
    cols = {"none": names.index("none")}
    if k == 0:
        cols.update(influence=cols["none"], reverse=cols["none"], random=[cols["none"]], channel=[cols["none"]])
        return cols
    cols["influence"] = names.index(f"influence@{k}")
    cols["reverse"] = names.index(f"reverse@{k}")
    cols["random"] = [i for i, m in enumerate(bank) if m.kind == "random" and m.k == k]
    cols["channel"] = [i for i, m in enumerate(bank) if m.kind == "channel" and m.k == k]
    return cols


def metric_rows(attack: str, stats: np.ndarray, member: np.ndarray, grid: list[int], bank: list[MaskId]) -> list[dict]:
    """protocol "all": every (mask, t) on all samples; random/channel draws as mean and std."""
    N, T, M = stats.shape
    flat = stats.reshape(N, T * M)
    step = max(1, 2**17 // N)  # column blocks bound the sort's working memory (~1 MiB per array)
    blocks = [metrics_matrix(-flat[:, s:s + step], member) for s in range(0, T * M, step)]
    mm = {m: np.concatenate([b[m] for b in blocks]).reshape(T, M) for m in blocks[0]}
    rows = []
    groups: dict[tuple, list[int]] = {}
    for j, m in enumerate(bank):
        groups.setdefault((m.kind, m.k), []).append(j)
    for (kind, k), js in groups.items():
        for ti, t in enumerate(grid):
            r = {"attack": attack, "mask": kind, "k": k, "t": t, "protocol": "all", "draws": len(js)}
            for m in METRICS:
                vals = mm[m][ti, js]
                r[m] = float(vals.mean())
                if len(js) > 1:
                    r[m + "_std"] = float(vals.std(ddof=1))
            rows.append(r)
    return rows


def k_sweep(stats: np.ndarray, member: np.ndarray, grid: list[int], bank: list[MaskId], ks, t_index: int) -> dict:
    S = -stats[:, t_index, :]
    auc = metrics_matrix(S, member)["auc"]
    out = {"t": grid[t_index], "k": [], "influence": [], "reverse": [], "random_mean": [], "random_std": [],
           "channel_mean": [], "channel_std": []}
    for k in sorted(set(ks) | {0}):
        c = bank_columns(bank, k)
        out["k"].append(int(k))
        out["influence"].append(float(auc[c["influence"]]))
        out["reverse"].append(float(auc[c["reverse"]]))
        for name, key in (("random", "random"), ("channel", "channel")):
            v = auc[c[name]]
            out[f"{key}_mean"].append(float(v.mean()))
            out[f"{key}_std"].append(float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return out


def latent_usage(influence: np.ndarray, latent_shape, k: int, active_nats: float, degenerate: str | None = None) -> dict:
    """How much of the latent the decoder uses: influence per channel and dim, active share."""
    N = influence.shape[0]
    c = latent_shape[0]
    infl = influence.reshape(N, c, -1)
    per_sample_max = influence.max(1, keepdims=True)
    active = influence >= per_sample_max - active_nats
    # Dims the k% filter drops: the lowest-influence ones of each sample.
    n_drop = int(np.floor(influence.shape[1] * k / 100))
    order = np.argsort(influence, axis=1, kind="stable")
    dropped = np.zeros_like(active)
    np.put_along_axis(dropped, order[:, :n_drop], True, axis=1)
    dropped_inactive = float((dropped & ~active).sum() / max(dropped.sum(), 1))
    usage = {
        "channel_mean_influence": infl.mean((0, 2)).tolist(),
        "channel_std_influence": infl.std((0, 2)).tolist(),
        "dim_mean_influence": influence.mean(0).reshape(tuple(latent_shape)).tolist(),
        "channel_active_share": active.reshape(N, c, -1).mean((0, 2)).tolist(),
        "active_share": float(active.mean()),
        "active_nats": active_nats,
        "dropped_inactive_share": dropped_inactive,
    }
    if degenerate:
        usage["degenerate"] = degenerate
        usage["note"] = f"Latent usage is not meaningful here: {degenerate}."
    elif dropped_inactive > 0.5:
        usage["note"] = (f"{dropped_inactive:.0%} of the dims the k={k}% filter drops are inactive (more than "
                         f"{active_nats:g} nats below the sample's most influential dim): the filter mostly removes "
                         "dims the decoder ignores, so it can gain little over a random drop of dead dims.")
    else:
        usage["note"] = (f"{dropped_inactive:.0%} of the dropped dims are inactive; the decoder uses "
                         f"{usage['active_share']:.0%} of its latent dims.")
    return usage


def build_summaries(arrays: dict, config: AuditConfig) -> tuple[dict, list[dict], dict, dict, tuple, dict]:
    """(protocols, metric rows, k sweeps, ROC curves, (calibration, evaluation) masks, classifier
    scores) for every attack with stored arrays (a skipped attack has none).

    Masked attacks (vector and signed outputs) get every row and control; a scalar attack
    (PFAMI) its unfiltered rows only; a feature attack (GSA) one calibrated-protocol row from a
    classifier fitted on the calibration fold, and no paper-protocol row (its scores [N], NaN on
    the calibration fold, are the last element). docs/attacks.md, "In the audit".
    """
    from sklearn.metrics import roc_curve

    member = arrays["member"].astype(bool)
    bank = mask_bank(config)
    cols = bank_columns(bank, config.k)
    cal = calibration_split(member, config.calibration_fraction, config.seed)
    protocols = {
        "paper": {"description": ("every row (unfiltered, filtered, each control) at its own best t per metric, chosen "
                                  "with the labels on all samples, as the papers report: optimistic, no verdict is "
                                  "drawn from it"),
                  "per_attack": {}},
        "calibrated": {"description": (f"each row's t chosen by its own AUC on a calibration fold "
                                       f"({config.calibration_fraction:.0%} of each class), metrics measured on the other "
                                       "samples; the verdicts are judged here"),
                       "calibration_fraction": config.calibration_fraction, "per_attack": {}},
    }
    rows, sweeps, rocs, scores = [], {}, {}, {}
    for i, a in enumerate(config.attacks):  # i keys each attack's bootstrap: stable when others are skipped
        kind = output_kind(a)
        grid = config.grid(a)
        if kind == "features":
            if f"{a}__features" not in arrays:
                continue
            summ, scores[a] = summarise_classifier(arrays[f"{a}__features"], member, grid[0], config.bootstrap,
                                                   config.seed + 101 * i, cal, classifier_seed=config.seed)
            summ.update(protocol_note=CLASSIFIER_PROTOCOL, unmasked=UNMASKED_REASONS[kind])
            protocols["calibrated"]["per_attack"][a] = summ
            protocols["paper"].setdefault("omitted", {})[a] = NOT_IN_PAPER_PROTOCOL
            ev = cal[1]
            fpr, tpr, _ = roc_curve(member[ev], scores[a][ev], drop_intermediate=False)
            rocs[a] = {"t": grid[0], "fold": "evaluation", "unfiltered": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}
            continue
        if f"stats__{a}" not in arrays:
            continue
        stats = arrays[f"stats__{a}"]
        masked = is_masked(a)
        a_bank = attack_bank(config, a)
        a_cols = cols if masked else {"none": 0}
        settings = {} if masked else {"settings": ("none",)}
        for p in ("paper", "calibrated"):
            protocols[p]["per_attack"][a] = summarise_attack(
                stats, member, grid, a_cols, config.bootstrap, config.seed + 101 * i, p, cal, **settings)
            if not masked:
                protocols[p]["per_attack"][a]["unmasked"] = UNMASKED_REASONS[kind]
        rows.extend(metric_rows(a, stats, member, grid, a_bank))
        ti = grid.index(protocols["paper"]["per_attack"][a]["t_unfiltered_auc"])
        roc = {"t": grid[ti]}
        curves = [("unfiltered", cols["none"] if masked else 0, ti)]
        if masked:
            sweeps[a] = k_sweep(stats, member, grid, bank, config.k_sweep, ti)
            tf = grid.index(protocols["paper"]["per_attack"][a]["t"]["filtered"]["auc"])
            roc["t_filtered"] = grid[tf]
            curves.append(("filtered", cols["influence"], tf))
        for name, col, tt in curves:
            fpr, tpr, _ = roc_curve(member, -stats[:, tt, col], drop_intermediate=False)
            roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        rocs[a] = roc
    return protocols, rows, sweeps, rocs, cal, scores
