"""Memorization dynamics of text-to-image models (Kim, Kim & Lee 2025, "How Diffusion Models
Memorize", arXiv 2509.25705): latent decomposition and deviation score, alignment and
overestimation, trajectory collapse, the training-loss view, Wen et al.'s detector, delayed
guidance, over a deterministic sampler with classifier-free guidance: DDIM for VP families, the
flow Euler ODE for flow-matching ones (SD3, FLUX; docs/models.md §Dynamics).
"""
from .alignment import alignment_curves, denoising_losses
from .analyze import DynamicsConfig, analyze_prompt, analyze_prompts, initial_noise
from .collapse import diversity_curves, mean_pairwise_distance
from .decomposition import decompose, decompose_trajectory, deviation_scores, theoretical_coefficients
from .detector import separation, wen_curve, wen_score
from .paths import FLOW, VP, FlowPath, VPPath, path_of
from .prompts import PromptItem, load_image, read_prompts
from .run import run_dynamics, summarize
from .sampler import Trajectory, ddim_schedule, flow_schedule, guidance_schedule, sample_ddim, sample_trajectories
from .similarity import severity, torchscript_embedder

__all__ = [
    "FLOW", "VP", "DynamicsConfig", "FlowPath", "PromptItem", "Trajectory", "VPPath", "flow_schedule", "path_of",
    "sample_trajectories", "alignment_curves", "analyze_prompt", "analyze_prompts", "ddim_schedule",
    "decompose", "decompose_trajectory", "denoising_losses", "deviation_scores", "diversity_curves",
    "guidance_schedule", "initial_noise", "load_image", "mean_pairwise_distance", "read_prompts",
    "run_dynamics", "sample_ddim", "separation", "severity", "summarize", "theoretical_coefficients",
    "torchscript_embedder", "wen_curve", "wen_score",
]
