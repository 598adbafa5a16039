"""GSA: gradient-norm features of the denoising loss w.r.t. the denoiser's parameters (Pang et al.,
"White-box Membership Inference Attacks against Diffusion Models", PoPETs 2025, arXiv 2308.06405).

At K timesteps t_j = j·(t + 1)/K − 1 (j = 1 … K; t = T − 1, K = 10 give 99, 199, …, 999) with one
noise draw ε_j each, the per-sample loss at t_j is ℓ_j(θ) = mean_d (ε̂_θ(√ᾱ z + √(1−ᾱ) ε_j, t_j) − ε_j)².
The features are one ℓ2 norm per parameter tensor θ_l ("layer"):

- GSA1: ‖∇_{θ_l} (1/K) Σ_j ℓ_j‖   (the loss aggregated over t, then one gradient);
- GSA2: (1/K) Σ_j ‖∇_{θ_l} ℓ_j‖   (one gradient per t, the norms averaged).

A classifier on them predicts membership (:func:`gsa_scores`: gradient-boosted trees fitted on the
calibration fold). Checked against the authors' code (github py85252876/GSA,
DDPM/gen_l2_gradients_DDPM.py): the same timesteps, the loss as ``F.mse_loss`` over the K noisy
copies (GSA1) or each copy (GSA2), and one norm per ``model.parameters()`` entry, in that order.
Each draw here is keyed by (seed, sample id, t). Per-sample gradients are batched with
``torch.func`` (``vmap(grad(…))`` over samples, ``chunk_size`` bounding memory), equal to the
authors' one-sample-at-a-time backward passes.

Beyond the model contract (docs/contracts.md) the model must have ``denoiser``, the
``torch.nn.Module`` whose parameters are differentiated, and ``eps_with_grad(z_t, t, cond)``: ε̂
computed through ``denoiser`` with autograd on and no data-dependent checks (``torch.func`` traces
it per sample; t is a LongTensor, cond as ``encode_cond`` returns it). Some features are round-off
only, here as in the reference: an attention layer's key bias has zero gradient (softmax ignores a
shift shared by every key).
"""
from __future__ import annotations

import warnings

from typing import Callable, Sequence

import torch

from .._checks import check_batched
from ..diffusion import check_timesteps, vp_schedule
from ..errors import InputError, NonFiniteError
from .base import register_attack
from .classifier import classifier_scores
from .common import check_cond, keyed_noise

__all__ = ["gsa", "gsa_features", "gsa_timesteps", "gsa_layer_names", "gsa_scores", "denoiser_of"]


class _Through(torch.nn.Module):
    """``model.eps_with_grad`` as a module whose only submodule is ``model.denoiser``, so that
    ``functional_call`` can swap the denoiser's parameters for the call."""

    def __init__(self, model):
        super().__init__()
        self.net = model.denoiser
        self._eps = model.eps_with_grad

    def forward(self, x, t, cond):
        return self._eps(x, t, cond)


def denoiser_of(model) -> torch.nn.Module:
    """The module whose parameters GSA differentiates (``model.denoiser``), checked."""
    net = getattr(model, "denoiser", None)
    if not isinstance(net, torch.nn.Module) or not callable(getattr(model, "eps_with_grad", None)):
        raise InputError("gsa differentiates through the denoiser's parameters: the model needs a torch.nn.Module "
                         "`denoiser` and eps_with_grad(z_t, t, cond)")
    if not any(True for _ in net.parameters()):
        raise InputError("gsa: the model's denoiser has no parameters")
    return net


def gsa_layer_names(model) -> list[str]:
    """The feature columns: the denoiser's parameter names, in ``named_parameters()`` order."""
    return [name for name, _ in denoiser_of(model).named_parameters()]


def gsa_timesteps(t, k: int, T: int) -> list[int]:
    """The K evenly spaced timesteps j·(t + 1)/K − 1, j = 1 … K (integer division)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"n_timesteps must be a positive int, got {k!r}")
    last = int(check_timesteps(T - 1 if t is None else t, 1, T, "cpu", what="t for gsa"))
    if last + 1 < k:
        raise InputError(f"gsa needs t + 1 ≥ n_timesteps ({k}) for distinct timesteps, got t = {last}")
    return [j * (last + 1) // k - 1 for j in range(1, k + 1)]


def gsa_features(model, z: torch.Tensor, t=None, cond=None, *, sample_ids: Sequence | None = None, seed: int = 0,
                 noise_fn: Callable | None = None, method: int = 1, n_timesteps: int = 10,
                 chunk_size: int | None = None) -> torch.Tensor:
    """GSA features [N, n_layers] (``method`` 1 or 2), in the module's dtype.

    Noise: ``noise_fn(t)`` → a tensor shaped like z, else keyed draws from ``sample_ids``/``seed``.
    ``chunk_size``: samples (GSA2: sample-timestep pairs) per vectorised gradient, bounding the
    memory of the per-sample gradients (default: all at once).
    """
    from torch.func import functional_call, grad, vmap

    check_batched(z, "z")
    if method not in (1, 2):
        raise InputError(f"method must be 1 (GSA1) or 2 (GSA2), got {method!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise InputError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    n = z.shape[0]
    if cond is None and callable(getattr(model, "uncond", None)):
        cond = model.uncond(n)  # the null condition, as eps(…, cond=None) uses (None if unconditional)
    if cond is not None and not isinstance(cond, torch.Tensor):
        raise InputError("gsa needs cond as a batch-first tensor (or None)")
    check_cond(cond, n)
    net = denoiser_of(model)
    s = vp_schedule(model, z.device)
    ts = gsa_timesteps(t, n_timesteps, s.T)
    k = len(ts)
    if noise_fn is None:
        noise_fn = keyed_noise(z, sample_ids, seed, "gsa", lambda t_: f"gsa/t={t_}")

    eps = []
    for t_ in ts:
        e = noise_fn(t_)
        if not isinstance(e, torch.Tensor) or e.shape != z.shape:
            raise InputError(f"noise_fn({t_}) must return a tensor shaped like z {tuple(z.shape)}")
        eps.append(e.to(device=z.device, dtype=z.dtype))
    eps = torch.stack(eps, 1)                                         # [N, K, ...]
    tt = torch.tensor(ts, dtype=torch.long, device=z.device)
    z_t = s.noisy(z.repeat_interleave(k, 0), tt.repeat(n), eps.flatten(0, 1)).detach()  # [N·K, ...]

    through = _Through(model)
    params = {"net." + name: p.detach() for name, p in net.named_parameters()}
    names = list(params)

    def loss(p, x, t_, e, c):
        return (functional_call(through, p, (x, t_, c)) - e).pow(2).mean()

    if method == 1:  # rows = samples; each sees its K noisy copies as one batch
        x, tr, e = z_t.unflatten(0, (n, k)), tt, eps
        c = None if cond is None else cond.unsqueeze(1).expand(n, k, *cond.shape[1:])
        in_dims = (None, 0, None, 0, None if cond is None else 0)
    else:            # rows = (sample, t) pairs, each a batch of one
        x, tr, e = z_t.unsqueeze(1), tt.repeat(n).unsqueeze(1), eps.flatten(0, 1).unsqueeze(1)
        c = None if cond is None else cond.repeat_interleave(k, 0).unsqueeze(1)
        in_dims = (None, 0, 0, 0, None if cond is None else 0)
    with warnings.catch_warnings():  # torch's note that CPU flash attention has no batching rule: speed only
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        grads = vmap(grad(loss), in_dims=in_dims, chunk_size=chunk_size)(params, x, tr, e, c)
    feats = torch.stack([grads[name].flatten(1).norm(dim=1) for name in names], 1)  # [rows, L]
    if method == 2:
        feats = feats.unflatten(0, (n, k)).mean(1)
    if not torch.isfinite(feats).all():
        bad = (~torch.isfinite(feats)).any(1).nonzero().flatten().tolist()
        shown = [sample_ids[i] for i in bad] if sample_ids is not None else bad
        raise NonFiniteError(f"gsa: gradient norms are NaN/Inf for {len(bad)} sample(s): {shown[:10]}")
    return feats.detach()


def gsa(model, z: torch.Tensor, t=None, cond=None, **kwargs) -> torch.Tensor:
    """GSA features [N, n_layers] (not a vector shaped like z: score them with :func:`gsa_scores`).
    Keywords as :func:`gsa_features`."""
    return gsa_features(model, z, t, cond, **kwargs)


def gsa_scores(features_cal, member_cal, features_eval, seed: int = 0):
    """P(member) per evaluation sample (higher ⇒ member) from gradient-boosted trees fitted on the
    calibration fold's GSA features and labels (:func:`diffaudit.attacks.classifier.classifier_scores`)."""
    return classifier_scores(features_cal, member_cal, features_eval, seed=seed)


register_attack(
    "gsa", gsa, 2, display_name="GSA", first_t=9, needs=("cond", "perturbation", "param_grad"),
    output="features", grid=(999,), calls_per_t=10, backward_per_t=1,
    reference="Pang et al. 2025 (PoPETs), arXiv 2308.06405; checked against py85252876/GSA",
    description="per-parameter-tensor ‖∇_θ loss‖ at 10 timesteps up to t (GSA1; method=2: GSA2), for a classifier",
)
