"""Forward-mode AD through diffusers' attention blocks (measured with torch 2.13 CPU).

`torch.func.jvp` fails inside a diffusers VAE's attention mid-block twice over: the default CPU
SDPA (flash) kernel has no forward-AD formula, and under the MATH kernel the next `group_norm`
fails on the non-contiguous tensor the attention block hands on. The cure is both: run the JVP
under `sdpa_kernel(SDPBackend.MATH)` and give every `Attention` a processor whose output is
contiguous. The processor computes exactly what diffusers' `AttnProcessor2_0` computes.
"""
from __future__ import annotations

import contextlib
import functools
import sys

import torch
from torch import nn

_processor_class = None


def _contiguous_processor_class():
    """The processor class, built on first use so importing geometry never imports diffusers."""
    global _processor_class
    if _processor_class is None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        class ContiguousAttnProcessor(AttnProcessor2_0):
            """diffusers' AttnProcessor2_0 whose output is made contiguous (forward AD needs it)."""

            # The explicit signature matters: diffusers drops keyword arguments (temb) that the
            # processor's __call__ does not name.
            def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                         temb=None, *args, **kwargs):
                out = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask,
                                       temb, *args, **kwargs)
                return out.contiguous()

        ContiguousAttnProcessor.__qualname__ = "ContiguousAttnProcessor"
        ContiguousAttnProcessor.__module__ = __name__
        _processor_class = ContiguousAttnProcessor
    return _processor_class


def __getattr__(name):
    # `attention.ContiguousAttnProcessor` resolves on demand, so modules holding it pickle.
    if name == "ContiguousAttnProcessor":
        return _contiguous_processor_class()
    raise AttributeError(name)


def prepare_decoder_for_jvp(module: nn.Module) -> nn.Module:
    """Install a contiguous-output attention processor on every diffusers `Attention` in `module`.

    Idempotent; the same math as `AttnProcessor2_0`, yet not bit for bit: the contiguous output
    changes the next layer's summation order, so decoder outputs move by a few ulps (1.2e-5 at
    magnitude 3.7 on a random SD-layout decoder, enough to move a central-difference σ by 1e-4
    relative). diffaudit's models install it when loaded (models/first_stage.py), so every pass
    of an audit runs one processor; a bare decoder gets it at its first `method="jvp"` call and
    keeps it. Only diffusers' own
    standard processors (`AttnProcessor`, `AttnProcessor2_0`) are replaced; custom ones are
    left alone. A module without diffusers attention is returned unchanged. Returns `module`.
    """
    if "diffusers" not in sys.modules or not isinstance(module, nn.Module):
        return module  # no diffusers loaded: the module cannot hold a diffusers Attention
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    cls = _contiguous_processor_class()
    for sub in module.modules():
        if isinstance(sub, Attention) and type(sub.processor) in (AttnProcessor, AttnProcessor2_0):
            sub.set_processor(cls())
    return module


def modules_behind(decode) -> list[nn.Module]:
    """nn.Modules a decode callable runs: itself, a bound method's owner (and the owner's
    module attributes, e.g. an adapter's `.vae`), functools.partial parts, closure cells."""
    seen, found = set(), []

    def add(obj, depth):
        if obj is None or id(obj) in seen or depth > 2:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.append(obj)
            return
        if isinstance(obj, functools.partial):
            add(obj.func, depth + 1)
            for a in (*obj.args, *obj.keywords.values()):
                add(a, depth + 1)
            return
        owner = getattr(obj, "__self__", None)
        if owner is not None:
            add(owner, depth + 1)
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                add(cell.cell_contents, depth + 1)
            except ValueError:  # empty cell
                pass
        code, glob = getattr(obj, "__code__", None), getattr(obj, "__globals__", None)
        if code is not None and isinstance(glob, dict):  # module-level names a function uses
            for name in code.co_names:
                if isinstance(glob.get(name), nn.Module):
                    add(glob[name], depth + 1)
        if depth > 0 and isinstance(getattr(obj, "__dict__", None), dict):
            for value in list(vars(obj).values()):
                if isinstance(value, nn.Module):
                    add(value, depth + 1)

    add(decode, 0)
    return found


def prepare_callable_for_jvp(decode) -> None:
    """Apply `prepare_decoder_for_jvp` to every module `decode` visibly runs (see modules_behind)."""
    if "diffusers" not in sys.modules:
        return
    for module in modules_behind(decode):
        prepare_decoder_for_jvp(module)


def jvp_context():
    """Context for forward-mode AD: the MATH SDPA kernel, which has forward-AD formulas."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)
