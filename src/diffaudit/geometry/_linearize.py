"""Batched Jacobian products of a decoder at a chunk of latents, never building J (arXiv 2511.20592 App. A).

`Linearization(decode, z)` offers, per sample n, J_n·V (forward mode via `torch.func.jvp`, or
central differences) and J_nᵀ·Y (reverse mode). Columns are folded into the batch dimension
(samples do not interact in a decoder, so each item's product is that sample's product):

- J·V: one decoder call per chunk of (sample, column) items.
- Jᵀ·Y, mode "loop": one forward at the chunk's samples with a kept graph, then one backward
  pass per column; the graph serves every later call (fastest on a CPU: measured
  0.32 s against 0.54 s for a per-sample loop and 1.08 s for vmap).
- Jᵀ·Y, mode "fold": (sample, column) items folded into one forward/backward (fewer, larger
  calls; the default on accelerators).
"""
from __future__ import annotations

import contextlib
import math
import weakref

import torch

from ..errors import DiffauditError, InputError, ModelError, NonFiniteError
from .attention import jvp_context, prepare_callable_for_jvp

VJP_MODES = ("auto", "loop", "fold")


@contextlib.contextmanager
def _grad_context():
    """Autograd on, whatever the caller's mode (no_grad or inference_mode)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def check_items(x: torch.Tensor, samples: list[int], what: str) -> torch.Tensor:
    """Raise NonFiniteError naming the samples (global indices) whose items hold NaN/Inf."""
    if torch.isfinite(x).all():
        return x
    bad_items = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
    bad = sorted({samples[i] for i in bad_items})
    shown = ", ".join(str(b) for b in bad[:10]) + (" …" if len(bad) > 10 else "")
    raise NonFiniteError(f"{what} produced NaN/Inf for {len(bad)} sample(s): {shown}")


def call_decoder(decode, z: torch.Tensor, samples: list[int], what: str = "decoder") -> torch.Tensor:
    """decode(z) with its failures turned into one-line diffaudit errors."""
    try:
        x = decode(z)
    except DiffauditError:
        raise
    except Exception as e:  # a decoder failing on our input: say which input, keep the cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"decode failed on z of shape {tuple(z.shape)} ({z.dtype}): {first}") from e
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != z.shape[0]:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"decode must return a batch-first tensor with {z.shape[0]} rows, got {got}")
    return check_items(x, samples, what)


# Output shapes already measured, per decoder (weakly held: a cache entry dies with its decoder).
_SHAPES: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def output_shape(decode, z: torch.Tensor) -> tuple[int, ...]:
    """Per-sample output shape of decode, from one sample without a graph.

    Remembered per decoder and latent shape, dtype and device: every chunk of an audit calls
    influence and distortion, and at Stable Diffusion size this batch-1 forward was ~10% of
    one sample's influence (benchmarks/README.md). A bound method is remembered on its object.
    """
    owner, func = (decode.__self__, decode.__func__) if hasattr(decode, "__func__") and \
        getattr(decode, "__self__", None) is not None else (decode, None)
    key = (func, tuple(z.shape[1:]), z.dtype, z.device)
    try:
        cache = _SHAPES.setdefault(owner, {})
    except TypeError:  # not weakly referenceable or unhashable: measure every time
        cache = {}
    if key not in cache:
        with torch.no_grad():
            x = call_decoder(decode, z[:1].detach(), [0])
        cache[key] = tuple(x.shape[1:])
    return cache[key]


def resolve_vjp_mode(mode: str, device: torch.device) -> str:
    if mode not in VJP_MODES:
        raise InputError(f"vjp_mode must be one of {', '.join(VJP_MODES)}, got {mode!r}")
    if mode == "auto":
        return "loop" if device.type == "cpu" else "fold"
    return mode


class Linearization:
    """J_D at samples z[0..n) (global indices first_id..): products as [n, rows, cols] matrices."""

    def __init__(self, decode, z: torch.Tensor, out_shape, *, first_id=0, method="jvp", h=None,
                 items=64, vjp_mode="loop", ids=None):
        self.decode, self.z = decode, z.detach()
        self.n, self.zshape, self.xshape = z.shape[0], tuple(z.shape[1:]), tuple(out_shape)
        self.d, self.m = math.prod(self.zshape), math.prod(self.xshape)
        self.ids = list(ids) if ids is not None else list(range(first_id, first_id + self.n))
        self.method, self.h, self.items, self.vjp_mode = method, h, items, vjp_mode
        self._graph = None  # (z with grad, x, columns) kept between reverse calls
        self.products = 0  # Jacobian products per sample so far (J·v and Jᵀ·y each count 1)
        if method == "jvp":
            prepare_callable_for_jvp(decode)

    # -- J·V ---------------------------------------------------------------------------------
    def restrict(self, rows: list[int]) -> "Linearization":
        """The same linearization at samples `rows` only (a kept graph is rebuilt when needed)."""
        return Linearization(self.decode, self.z[rows], self.xshape, ids=[self.ids[r] for r in rows],
                             method=self.method, h=self.h, items=self.items, vjp_mode=self.vjp_mode)

    def jvp(self, V: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """[n, k, *zshape] tangents -> [n, k, *xshape] products J_n·v (at samples `rows` if given)."""
        n, k = V.shape[:2]
        z, ids = (self.z, self.ids) if rows is None else (self.z[rows], [self.ids[r] for r in rows])
        z_items = z.repeat_interleave(k, dim=0)  # contiguous: forward AD rejects stride-0 views
        v_items = V.reshape(n * k, *self.zshape).to(self.z.dtype).contiguous()
        owner = [ids[i // k] for i in range(n * k)]
        step = self.items if self.method == "jvp" else max(1, self.items // 2)
        outs = [self._jvp_items(z_items[s:s + step], v_items[s:s + step], owner[s:s + step])
                for s in range(0, n * k, step)]
        self.products += k
        return torch.cat(outs).reshape(n, k, *self.xshape)

    def _jvp_items(self, z, v, owner):
        if self.method == "fd":
            with torch.no_grad():
                x = call_decoder(self.decode, torch.cat([z + self.h * v, z - self.h * v]), owner + owner)
            out = (x[: len(z)] - x[len(z):]) / (2 * self.h)
        else:
            try:
                with torch.no_grad(), jvp_context():
                    _, out = torch.func.jvp(self.decode, (z,), (v,))
            except DiffauditError:
                raise
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelError(f"forward-mode JVP failed inside decode ({first}); use method='fd'") from e
        return check_items(out, owner, "decoder JVP")

    # -- Jᵀ·Y --------------------------------------------------------------------------------
    def vjp(self, Y: torch.Tensor, rows: list[int] | None = None, keep: bool = True) -> torch.Tensor:
        """[n, k, *xshape] cotangents -> [n, k, *zshape] products J_nᵀ·y (at samples `rows` if given).

        Mode "loop" backpropagates through the graph at all samples (zero cotangents for the
        others): cheaper than a new forward while most samples are still in `rows`.
        `keep=False`: the last call; its last backward frees the graph as it goes.
        """
        n, k = Y.shape[:2]
        self.products += k
        ids = self.ids if rows is None else [self.ids[r] for r in rows]
        if self.vjp_mode == "loop":
            zg, x = self._graph_for(self.z, self.ids, key="loop")
            Y = Y.to(x.dtype)
            if rows is not None:
                full = Y.new_zeros(self.n, k, *self.xshape)
                full[rows] = Y
                Y = full
            with _grad_context():
                cols = [torch.autograd.grad(x, zg, Y[:, j], retain_graph=keep or j < k - 1)[0] for j in range(k)]
            if not keep:
                self.release()
            out = torch.stack(cols, dim=1)
            if rows is not None:
                out = out[rows]
            return check_items(out.reshape(n, -1), ids, "decoder VJP").reshape(n, k, *self.zshape)
        z = self.z if rows is None else self.z[rows]
        z_items = z.repeat_interleave(k, dim=0)  # contiguous: forward AD rejects stride-0 views
        y_items = Y.reshape(n * k, *self.xshape).contiguous()
        owner = [ids[i // k] for i in range(n * k)]
        outs = []
        for s in range(0, n * k, self.items):
            e = min(n * k, s + self.items)
            # One chunk holding every item: keep its graph for the next call with k columns.
            key = ("fold", k, None if rows is None else tuple(rows)) if e - s == n * k else None
            zg, x = self._graph_for(z_items[s:e], owner[s:e], key=key)
            with _grad_context():
                outs.append(torch.autograd.grad(x, zg, y_items[s:e].to(x.dtype),
                                                retain_graph=keep and key is not None)[0])
        if not keep:
            self.release()
        out = torch.cat(outs)
        return check_items(out, owner, "decoder VJP").reshape(n, k, *self.zshape)

    def _graph_for(self, z, owner, key):
        if key is not None and self._graph is not None and self._graph[0] == key:
            return self._graph[1], self._graph[2]
        with _grad_context():
            zg = z.detach().clone().requires_grad_(True)
            x = call_decoder(self.decode, zg, owner)
        if key is not None:
            self._graph = (key, zg, x)
        return zg, x

    def release(self):
        self._graph = None

    # -- matrix forms ------------------------------------------------------------------------
    def matmul(self, V: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """[n, d, k] -> [n, m, k]: J_n V_n."""
        n, _, k = V.shape
        out = self.jvp(V.transpose(1, 2).reshape(n, k, *self.zshape), rows)
        return out.reshape(n, k, self.m).transpose(1, 2)

    def rmatmul(self, Y: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """[n, m, k] -> [n, d, k]: J_nᵀ Y_n."""
        n, _, k = Y.shape
        out = self.vjp(Y.transpose(1, 2).reshape(n, k, *self.xshape), rows)
        return out.reshape(n, k, self.d).transpose(1, 2).to(self.z.dtype)
