"""Decoder geometry: influence, singular values and local distortion of D at z (arXiv 2511.20592 §3.2–3.3).

Works on any differentiable `decode(z) -> x` (an nn.Module, a bound method, a function) on
batch-first float32/float64 latents; J_D is never built. Samples never interact: results per
sample are the same whatever the batch or chunk size (with per-sample generators, whatever
the batch's other samples).
"""
from .attention import prepare_decoder_for_jvp
from .distortion import distortion
from .hutchinson import influence, jacobian_diag
from .svd import singular_values

__all__ = ["jacobian_diag", "influence", "singular_values", "distortion", "prepare_decoder_for_jvp"]
