"""`train_ldm`: β-VAE, then a latent DDPM on its frozen latents, saved in diffusers format.

arXiv 2511.20592 App. H. The output folder follows docs/contracts.md:
  out/vae/ (AutoencoderKL or VQModel), out/unet/ (UNet2DModel), out/scheduler/ (DDPMScheduler),
  out/diffaudit.json, and out/checkpoints/ (resumable state; safe to delete once finished).
Rerunning with the same arguments continues from the last checkpoint; a finished stage is
loaded, not retrained. `unet_steps` may be raised on a finished run to train further.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .._checks import check_batched, check_finite
from ..errors import ConfigError, InputError
from .checkpoint import read_json, save_pretrained_atomic, write_json
from .loop import batch_indices, init_seeded, optimize
from .models import build_scheduler, build_unet, build_vae, ddpm_loss, encode_latents, vae_loss
from .presets import Preset, get_preset


def _tensor_sha256(t: torch.Tensor | None) -> str | None:
    if t is None:
        return None
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _check_inputs(images, labels, preset: Preset):
    check_batched(images, "images", min_dim=4)
    if images.dim() != 4:
        raise InputError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    r = preset.resolution
    if tuple(images.shape[2:]) != (r, r):
        raise InputError(
            f"images are {images.shape[2]}x{images.shape[3]} but preset {preset.name!r} needs {r}x{r}: "
            "resize them when loading"
        )
    check_finite(images, "images")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise InputError(f"images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != (images.shape[0],) or labels.is_floating_point() or (labels < 0).any():
            raise InputError(f"labels must be {images.shape[0]} non-negative integers, got shape {tuple(labels.shape)}")
        labels = labels.long()
    return images.float(), labels


def _fingerprint(preset: Preset, seed: int, images, labels, conditional: bool) -> dict:
    """What a resumed run must share with the interrupted one (unet_steps may grow)."""
    cfg = preset.to_dict()
    for k in ("unet_steps", "unet_epochs", "checkpoint_every", "description"):
        cfg.pop(k)
    return {
        "preset": cfg,
        "seed": seed,
        "images_sha256": _tensor_sha256(images),
        "labels_sha256": _tensor_sha256(labels) if conditional else None,
        "class_conditional": conditional,
    }


def _prepare_out(out: Path, fingerprint: dict) -> Path:
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    run_file = ckpt / "run.json"
    if run_file.exists():
        old = read_json(run_file)
        if old != json.loads(json.dumps(fingerprint)):
            diff = sorted(k for k in fingerprint if old.get(k) != json.loads(json.dumps(fingerprint)).get(k))
            raise ConfigError(
                f"{out} holds a training run with different settings ({', '.join(diff)}); "
                "use another --out folder or delete this one"
            )
    else:
        write_json(run_file, fingerprint)
    return ckpt


def _adamw(model, lr, wd):
    # App. H: AdamW, betas (0.9, 0.999); foreach=False keeps the update order fixed across runs.
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=wd, foreach=False)


def _train_vae(images, preset, seed, ckpt, device, progress, callback, n_steps):
    from diffusers import AutoencoderKL, VQModel

    out_vae = ckpt.parent / "vae"
    done = read_json(ckpt / "vae.json") if (ckpt / "vae.json").exists() else {}
    if done.get("finished") and out_vae.exists():  # finished stage: load, don't retrain
        cls = VQModel if preset.vae_type == "vq" else AutoencoderKL
        return cls.from_pretrained(out_vae).to(device), done["result"]
    vae = init_seeded(lambda: build_vae(preset, images.shape[1]), seed, "vae").to(device)
    opt = _adamw(vae, preset.vae_lr, preset.vae_weight_decay)

    def step_loss(step):
        idx = batch_indices(images.shape[0], preset.vae_batch, step, seed, "vae")
        x = images[idx].to(device)
        if preset.hflip:
            flip = torch.rand(x.shape[0], device=device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return vae_loss(vae, x, preset.beta_kl)

    res = optimize("vae", vae, opt, step_loss, n_steps, seed, ckpt, preset.checkpoint_every,
                   progress, callback)
    vae.eval()
    if preset.scaling_factor is None:  # 1 / std of the member latents (Rombach et al.)
        s = 1.0 / float(encode_latents(vae, images.to(device)).std())
    else:
        s = float(preset.scaling_factor)
    vae.register_to_config(scaling_factor=s)
    save_pretrained_atomic(vae, out_vae)
    result = {"steps": res.steps, "final_losses": res.final, "curve": res.curve, "seconds": res.seconds,
              "cpu_seconds": res.cpu_seconds,
              "scaling_factor": s}
    write_json(ckpt / "vae.json", dict(read_json(ckpt / "vae.json"), finished=True, result=result))
    return vae, result


def _train_unet(images, labels, vae, preset, seed, ckpt, device, progress, callback, n_steps, n_classes):
    vae.eval()
    s = float(vae.config.scaling_factor)
    with torch.no_grad():  # frozen latents, computed once (App. H)
        lat = encode_latents(vae, images.to(device)) * s
        lat_flip = encode_latents(vae, images.flip(-1).to(device)) * s if preset.hflip else None
    null_class = n_classes  # the extra embedding row used for label dropout / unconditional queries
    unet = init_seeded(lambda: build_unet(preset, None if n_classes is None else n_classes + 1), seed,
                       "unet").to(device)
    sched = build_scheduler(preset)
    sched.alphas_cumprod = sched.alphas_cumprod.to(device)
    opt = _adamw(unet, preset.unet_lr, preset.unet_weight_decay)

    def step_loss(step):
        idx = batch_indices(lat.shape[0], preset.unet_batch, step, seed, "unet")
        z0 = lat[idx]
        if lat_flip is not None:
            flip = torch.rand(z0.shape[0], device=device) < 0.5
            z0 = torch.where(flip[:, None, None, None], lat_flip[idx], z0)
        cls = None
        if n_classes is not None:
            cls = labels[idx].to(device)
            drop = torch.rand(cls.shape[0], device=device) < preset.cond_drop
            cls = torch.where(drop, torch.full_like(cls, null_class), cls)
        return {"loss": ddpm_loss(unet, sched, z0, cls)}

    res = optimize("unet", unet, opt, step_loss, n_steps, seed, ckpt, preset.checkpoint_every,
                   progress, callback)
    unet.eval()
    save_pretrained_atomic(unet, ckpt.parent / "unet")
    sched_dir = ckpt.parent / "scheduler"
    sched_dir.mkdir(exist_ok=True)
    build_scheduler(preset).save_config(sched_dir)
    return unet, {"steps": res.steps, "final_losses": res.final, "curve": res.curve, "seconds": res.seconds,
                  "cpu_seconds": res.cpu_seconds,
                  "resumed_from": res.resumed_from, "latent_std": float(lat.std()),
                  "latent_shape": list(lat.shape[1:])}


def train_ldm(
    images: torch.Tensor,
    preset: str | Preset = "digits",
    out_dir: str | Path = "diffaudit-model",
    labels: torch.Tensor | Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = True,
    vae_steps: int | None = None,
    unet_steps: int | None = None,
    class_conditional: bool = False,
    device: str | torch.device = "cpu",
    split_info: dict | None = None,
    callback: Callable[[str, int, dict], None] | None = None,
) -> dict:
    """Train the preset's β-VAE on `images`, then its latent DDPM on their latents; save to out_dir.

    images: float [N, C, H, W] in [-1, 1], the MEMBER split only (H = W = preset.resolution).
    labels: integer class per image; used only with class_conditional=True (one extra "null"
    class, index = number of classes, is trained with probability preset.cond_drop).
    vae_steps / unet_steps override the preset's step counts. split_info (e.g. the split file's
    path and hashes) is recorded verbatim in diffaudit.json. Returns the diffaudit.json dict.
    """
    preset = get_preset(preset)
    if vae_steps is not None:
        preset = preset.with_overrides(vae_steps=int(vae_steps))
    if unet_steps is not None:
        preset = preset.with_overrides(unet_steps=int(unet_steps))
    if class_conditional and labels is None:
        raise InputError("class_conditional=True needs labels (one integer class per image)")
    images, labels = _check_inputs(images, labels, preset)
    n_classes = int(labels.max()) + 1 if class_conditional else None
    device = torch.device(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    t_start = time.perf_counter()
    ckpt = _prepare_out(out, _fingerprint(preset, seed, images, labels, class_conditional))
    n = images.shape[0]
    vae, vae_res = _train_vae(images, preset, seed, ckpt, device, progress, callback, preset.steps("vae", n))
    _, unet_res = _train_unet(images, labels, vae, preset, seed, ckpt, device, progress, callback,
                              preset.steps("unet", n), n_classes)
    import diffusers

    meta = {
        "format": "diffaudit-train/1",
        "preset": preset.name,
        "preset_config": preset.to_dict(),
        "seed": seed,
        "n_members": n,
        "image_shape": list(images.shape[1:]),
        "members_sha256": _tensor_sha256(images),
        "split": split_info,
        "class_conditional": class_conditional,
        "num_classes": n_classes,
        "null_label": n_classes,  # the label the adapter's uncond() uses
        "scaling_factor": vae_res["scaling_factor"],
        "kl_convention": "l1 (mean over pixels) + beta_kl * KL (mean over latent elements)",
        "steps": {"vae": vae_res["steps"], "unet": unet_res["steps"]},
        "final_losses": {"vae": vae_res["final_losses"], "unet": unet_res["final_losses"]},
        "loss_curves": {"vae": vae_res["curve"], "unet": unet_res["curve"]},
        "times_s": {"vae": vae_res["seconds"], "unet": unet_res["seconds"],
                    "this_session_total": time.perf_counter() - t_start},
        # process CPU time: what the run costs on an idle core when other jobs share the machine
        "cpu_s": {"vae": vae_res.get("cpu_seconds"), "unet": unet_res["cpu_seconds"]},
        "steps_per_s": {"vae": vae_res["steps"] / max(vae_res["seconds"], 1e-9),
                        "unet": unet_res["steps"] / max(unet_res["seconds"], 1e-9)},
        "latent_shape": unet_res["latent_shape"],
        "latent_std": unet_res["latent_std"],
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    write_json(out / "diffaudit.json", meta)
    return meta
