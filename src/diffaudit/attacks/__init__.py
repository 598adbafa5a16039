"""Membership-inference attack vectors on a noise predictor (arXiv 2511.20592 §3.1).

Each attack returns a *vector* shaped like the latent z; a statistic (Σ|v|^p, optionally after an
influence mask) turns it into one number per sample: smaller ⇒ more likely a member. A model is
any object with ``eps(z_t, t, cond=None)`` (t a LongTensor [N]) and ``alphas_cumprod`` (1-D,
length T); see docs/contracts.md.

One module per attack (``sima``, ``loss``, ``pia``, ``secmi``, ``pian``, ``pfami``, ``clid``,
``gsa``; docs/attacks.md), each registering one
:class:`AttackSpec` in :data:`ATTACKS`; everything else in diffaudit reads the registry. For many
timesteps at once use :func:`attack_sweep`, which packs (sample, t) pairs into few model calls.
"""
from __future__ import annotations

from .base import ATTACKS, NEEDS, AttackSpec, display_name, register_attack
from .statistic import statistic, statistic_bank
# The built-in attacks, in registration (and default display) order.
from .sima import sima
from .loss import loss, loss_noise
from .pia import pia
from .secmi import secmi
from .pian import pian
from .pfami import pfami
from .clid import clid
from .gsa import gsa, gsa_scores
from .sweep import attack_sweep

__all__ = [
    "ATTACKS", "NEEDS", "AttackSpec", "register_attack", "display_name",
    "sima", "loss", "loss_noise", "pia", "secmi", "pian", "pfami", "clid", "gsa", "gsa_scores",
    "attack_sweep", "statistic", "statistic_bank",
]
