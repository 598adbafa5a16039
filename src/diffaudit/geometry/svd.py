"""Top singular values of the decoder Jacobian (arXiv 2511.20592 §3.2, Algorithm 1 in App. A).

Three matrix-free algorithms, batched over samples (each sample's products in the same decoder
calls as the others'). With ℓ = min(K + p, d) (rank K, oversampling p) and q = power_iters:
- "subspace": the paper's Algorithm 1 (randomized SVD with q power passes):
  V ← qr(N(0, I_{d×ℓ})); q times V ← qr(Jᵀ(J V)); Y = J V; Q = qr(Y); T = Jᵀ Q;
  σ = svdvals(T)[:K]. Cost (2q+2)·ℓ Jacobian products per sample (300 at K=20, p=30, q=2).
- "block_krylov": block Lanczos on JᵀJ with full reorthogonalisation (randomized block Krylov,
  Musco & Musco 2015), q+1 blocks of b = `block_size` columns: W₁ = qr(N(0, I_{d×b})),
  W_{i+1} = orth(JᵀJ Wᵢ ⊥ W₁..Wᵢ); Ritz values σ = svdvals([J W₁, …]). Cost (2q+1)·b
  (210 at b = 10, q = 10). It keeps every power (JᵀJ)^i V₀ where Algorithm 1 keeps the last.
- "gkl" (default): Golub–Kahan–Lanczos, one column a step, stopped per sample once its top-K
  Ritz residuals are ≤ tol·σ (lanczos.py). Its cost is what each sample needs.
Measured against svdvals of the full Jacobian of random-init AutoencoderKL decoders with SD's
block layout at 1/16 width (flat spectra, σ₁/σ₂₀ ≈ 1.6–1.9, the hard case), worst relative
error of the top 20 (benchmarks/README.md): d = 256 (4 samples): Algorithm 1 2.8e-3 (300
products); block_krylov 9.9e-5 (210); gkl 4.6e-5 (96–114, mean 105). d = 1024 (3 samples):
3.1e-2; 6.1e-4; 4.7e-5–1.7e-4 (126–160). With tol = 1e-2 one d = 256 sample stopped with a
top-20 value still missing (error 5.6e-3); 3e-3 (default) and 5e-3 stopped correctly on all.
J·V defaults to central differences: on CPU a `torch.func.jvp` column costs about 3.6 decoder
forwards, a central difference 2, and the float32 difference error (relative on σ: ≈1e-4 on the
benchmark's decoder, 1.9e-4–2.4e-4 on a trained digits decoder) is far below Algorithm 1's.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from ._inputs import (GeneratorArg, WORKSPACE_ELEMS, check_choice, check_latent, check_positive_int,
                      default_fd_step, draw, items_per_call, per_sample_generators)
from ._linearize import Linearization, output_shape, resolve_vjp_mode
from .lanczos import gkl_svdvals

METHODS = ("jvp", "fd")
ALGORITHMS = ("subspace", "block_krylov", "gkl")
DEFAULT_ALGORITHM = "gkl"  # measured fastest at equal or better accuracy (benchmarks/README.md)
PAPER_POWER_ITERS = 2  # Algorithm 1's q (arXiv 2511.20592 §4.2)
KRYLOV_BLOCK_SIZE = 10  # block_krylov defaults: 11 blocks of 10 columns
KRYLOV_POWER_ITERS = 10
GKL_BLOCK_SIZE = 1  # gkl defaults: one column a step, stopped at Ritz residual ≤ tol·σ,
GKL_TOL = 3e-3  # after at most (power_iters + 1)·⌈rank / block_size⌉ steps: a basis of 10·rank
GKL_POWER_ITERS = 9


def resolve_svd_options(algorithm: str, power_iters: int | None, block_size: int | None) -> tuple[int, int | None]:
    """The per-algorithm defaults of `power_iters` and `block_size` (None = default)."""
    if algorithm == "subspace":
        return (PAPER_POWER_ITERS if power_iters is None else power_iters), None
    if algorithm == "gkl":
        return ((GKL_POWER_ITERS if power_iters is None else power_iters),
                (GKL_BLOCK_SIZE if block_size is None else block_size))
    return ((KRYLOV_POWER_ITERS if power_iters is None else power_iters),
            (KRYLOV_BLOCK_SIZE if block_size is None else block_size))


def max_products(algorithm: str, rank: int, oversample: int, power_iters: int | None, block_size: int | None) -> int:
    """The most Jacobian products (J·v plus Jᵀ·u) `singular_values` spends per sample (before
    capping by the latent size d): gkl's budget (it stops earlier per sample), else the fixed cost."""
    q, b = resolve_svd_options(algorithm, power_iters, block_size)
    if algorithm == "gkl":
        return 2 * b * _gkl_max_steps(rank, b, q)
    if algorithm == "block_krylov":
        return (2 * q + 1) * b
    return (2 * q + 2) * (rank + oversample)


def _gkl_max_steps(rank: int, width: int, power_iters: int) -> int:
    return (power_iters + 1) * -(-rank // width)  # power_iters + 1 passes of ⌈rank/b⌉ steps


def _orth(A: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(A, mode="reduced").Q


def subspace_svdvals(lin: Linearization, V0: torch.Tensor, power_iters: int) -> torch.Tensor:
    """Algorithm 1 on every sample of `lin` from start matrices V0 [n, d, ℓ]; all ℓ values."""
    V = _orth(V0)
    for _ in range(power_iters):
        V = _orth(lin.rmatmul(lin.matmul(V)))
    Q = _orth(lin.matmul(V))
    return torch.linalg.svdvals(lin.rmatmul(Q))


def block_krylov_svdvals(lin: Linearization, W0: torch.Tensor, blocks: int) -> torch.Tensor:
    """Block Lanczos (full reorthogonalisation) on JᵀJ from W0 [n, d, b]; Ritz singular values."""
    W = _orth(W0)
    basis, images = [W], []
    for i in range(blocks):
        images.append(lin.matmul(basis[-1]))  # J W_i
        if i == blocks - 1 or sum(b.shape[2] for b in basis) >= lin.d:
            break
        Z = lin.rmatmul(images[-1])  # JᵀJ W_i
        B = torch.cat(basis, dim=2)
        for _ in range(2):  # twice is enough (Giraud et al.): keeps the basis orthonormal
            Z = Z - B @ (B.transpose(1, 2) @ Z)
        room = lin.d - B.shape[2]
        basis.append(_orth(Z[:, :, :room]))
    # R of a thin QR has the singular values of the tall m×(s·b) matrix, at k×k cost.
    return torch.linalg.svdvals(torch.linalg.qr(torch.cat(images, dim=2), mode="r").R)


def _check_sv_args(z, rank, oversample, power_iters, method, h, algorithm, block_size, tol=GKL_TOL):
    z = check_latent(z)
    rank = check_positive_int(rank, "rank")
    check_positive_int(oversample, "oversample", minimum=0)
    check_positive_int(power_iters, "power_iters", minimum=0)
    check_choice(method, "method", METHODS)
    check_choice(algorithm, "algorithm", ALGORITHMS)
    if block_size is not None:
        check_positive_int(block_size, "block_size")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < 1):
        raise InputError(f"tol must be a number in (0, 1), got {tol!r}")
    d = z[0].numel()
    if rank > d:
        raise InputError(f"rank={rank} exceeds the latent dimension d={d}: a Jacobian has at most d singular values")
    if h is None:
        h = default_fd_step(z.dtype)
    elif not (isinstance(h, (int, float)) and h > 0 and math.isfinite(h)):
        raise InputError(f"h must be a positive finite step, got {h!r}")
    return z, d, float(h)


def singular_values(decode, z: torch.Tensor, rank: int = 20, oversample: int = 30, power_iters: int | None = None,
                    method: str = "fd", h: float | None = None, generator: GeneratorArg = None, *,
                    algorithm: str = DEFAULT_ALGORITHM, block_size: int | None = None, tol: float = GKL_TOL,
                    max_batch: int | None = None, vjp_mode: str = "auto", stats: dict | None = None) -> torch.Tensor:
    """Top-`rank` singular values of J_D(z) per sample, `[N, rank]`, descending (paper §3.2, App. A).

    `method`: J·V by forward mode ("jvp", `torch.func.jvp`, made to work through diffusers
    attention, see `prepare_decoder_for_jvp`) or central differences ("fd",
    (D(z+hv) − D(z−hv))/2h along unit columns v, default h = eps^(1/3) of z's dtype); Jᵀ·Y by
    reverse mode. `algorithm="subspace"` is the paper's Algorithm 1 exactly: ℓ = min(rank +
    oversample, d) columns, `power_iters` (default 2) passes. `"block_krylov"` uses
    `power_iters + 1` (default 11) blocks of `block_size` (default 10, capped at d) columns.
    `"gkl"` (default): Golub–Kahan–Lanczos with blocks of `block_size` (default 1) columns, stopped per
    sample once every top-`rank` Ritz residual is ≤ `tol`·σ, or after at most
    (`power_iters` + 1)·⌈rank / block_size⌉ steps (default 9: a basis of 10·rank).
    `oversample` is Algorithm 1's only, `tol` gkl's only.
    `generator`: one, or one per sample (diffaudit.rng); `max_batch`, `vjp_mode` as in
    `jacobian_diag`. `stats`: a dict to receive `products`, the Jacobian products (J·v and Jᵀ·y
    each count 1) spent per sample, a LongTensor `[N]`.
    """
    power_iters, block_size = resolve_svd_options(algorithm, power_iters, block_size)  # checked below
    z, d, h = _check_sv_args(z, rank, oversample, power_iters, method, h, algorithm, block_size, tol)
    gens = per_sample_generators(generator, z.shape[0])
    width = min(block_size, d) if algorithm in ("block_krylov", "gkl") else min(rank + oversample, d)
    if algorithm == "block_krylov" and min(width * (power_iters + 1), d) < rank:
        raise InputError(f"block_krylov spans block_size·(power_iters+1) = {width * (power_iters + 1)} < rank={rank} "
                         "dimensions; raise block_size or power_iters")
    max_steps = _gkl_max_steps(rank, width, power_iters)
    xshape = output_shape(decode, z)
    m = math.prod(xshape)
    items = items_per_call(max_batch, m)
    mode = resolve_vjp_mode(vjp_mode, z.device)
    span = {"subspace": width, "block_krylov": min(d, width * (power_iters + 1)),
            "gkl": min(d, width * max_steps)}[algorithm]
    chunk = items if mode == "loop" else max(1, items // width)
    chunk = max(1, min(chunk, WORKSPACE_ELEMS // (2 * span * max(m, d))))
    out, products = [], []
    for s in range(0, z.shape[0], chunk):
        zc = z[s:s + chunk]
        lin = Linearization(decode, zc, xshape, first_id=s, method=method, h=h, items=items, vjp_mode=mode)
        start = draw(gens[s:s + chunk], (width, d), like=zc).transpose(1, 2)  # [n, d, width]
        if algorithm == "gkl":
            sv, used = gkl_svdvals(lin, start, rank, max_steps, tol)
        else:
            if algorithm == "subspace":
                sv = subspace_svdvals(lin, start, power_iters)
            else:
                sv = block_krylov_svdvals(lin, start, power_iters + 1)
            used = torch.full((zc.shape[0],), lin.products, dtype=torch.long)
        lin.release()
        out.append(sv[:, :rank])
        products.append(used)
    if stats is not None:
        stats["products"] = torch.cat(products)
    return torch.cat(out)
