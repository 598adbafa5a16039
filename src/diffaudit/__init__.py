"""diffaudit: does a (latent) diffusion model remember its training images, and which ones leak?"""
__version__ = "0.1.0"

from .errors import DiffauditError  # noqa: F401
