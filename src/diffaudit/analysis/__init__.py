"""Analyses on top of per-sample statistics: distortion strata (Fig. 3), frequency (T3, App. F)."""
