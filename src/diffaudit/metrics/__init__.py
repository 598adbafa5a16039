"""Membership metrics, their uncertainty and the tests behind the report's verdicts.

One engine: the audit's metric grid, bootstrap CIs, paired differences and threshold transfer are
these functions (docs/verdicts.md). Higher score = more likely a member.
"""
from .bootstrap import bootstrap_ci, bootstrap_columns, interval, paired_bootstrap_diff
from .delong import auc_contrast, independent_difference, placements
from .grid import auc_columns, metrics_matrix
from .multiplicity import holm
from .single import FPR_TARGETS, METRICS, fpr_resolution_notes, fpr_within, membership_metrics
from .threshold import clopper_pearson, fit_threshold, transfer

__all__ = ["FPR_TARGETS", "METRICS", "auc_columns", "auc_contrast", "bootstrap_ci", "bootstrap_columns",
           "clopper_pearson", "fit_threshold", "fpr_resolution_notes", "fpr_within", "holm",
           "independent_difference", "interval", "membership_metrics", "metrics_matrix",
           "paired_bootstrap_diff", "placements", "transfer"]
