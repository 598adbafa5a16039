"""Models the benchmarks run on, built from configs with random weights (no downloads).

Two sizes:
- "reduced" (CPU): Stable Diffusion's VAE block layout (4 UpDecoderBlock2D, 2 layers per block,
  attention mid-block) at 1/8 (influence) or 1/16 (distortion) of SD's width on 4×8×8 latents
  (64² images), and a small UNet2DModel on the same latents.
- "sd" (GPU): SD v1's own VAE and UNet configs (4×64×64 latents, 512² decoder output,
  UNet2DConditionModel with 768-d cross-attention fed a random text embedding).

And the "models" benchmark (`bench_families`; `python benchmarks/bench_models.py`): per model
family (models.registry.FAMILIES), the SimA + Loss + PIA + SecMI sweep over the audit's default
grids through the family's adapter (loaded from its tiny pipeline folder, models/tiny_pipelines.py)
against the bare denoiser forwards it needs: the very calls the sweep made (same rows per call,
max_batch as run_audit passes it), on inputs prepared beforehand as the family's pipeline passes
them (FLUX: packed tokens and ids; SD3: σ·T; SDXL: pooled embeddings and size ids; PixArt: the
mask); and the same sweep over those bare forwards, which isolates the adapter's share. Target:
ratio ≤ 1.15 (CPU-time minimum where measured).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

SD_SCALING = 0.18215

# Stable Diffusion v1's vae/config.json and unet/config.json (the fields that shape the nets).
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              norm_num_groups=32, sample_size=512)
SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(320, 640, 1280, 1280),
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
               cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD_TEXT_TOKENS = 77


def sd_layout_vae(width_div: int = 8, latent_hw: int = 8, seed: int = 0):
    """AutoencoderKL with SD's block layout at 1/width_div of SD's width (width_div=1: SD itself)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    widths = tuple(c // width_div for c in SD_VAE["block_out_channels"])
    groups = min(SD_VAE["norm_num_groups"], widths[0])
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=widths,
        layers_per_block=SD_VAE["layers_per_block"], latent_channels=SD_VAE["latent_channels"],
        norm_num_groups=groups, sample_size=latent_hw * 8, scaling_factor=SD_SCALING,
        mid_block_add_attention=True,
    ).eval().requires_grad_(False)


def decoder_fn(vae):
    """x = D(z / s): the decoder of a scaled latent, as the audit differentiates it (docs/method.md)."""
    def decode(z):
        return vae.decode(z / vae.config.scaling_factor).sample
    return decode


def small_unet(latent_hw: int = 8, seed: int = 1):
    """UNet2DModel on 4×h×w latents, the size of diffaudit's digits preset (attention at the bottom)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=latent_hw, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
    ).eval().requires_grad_(False)


def sd_unet(seed: int = 1):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**SD_UNET).eval().requires_grad_(False)


def diffusion_model(size: str, device: str, unet_dtype: str = "float32"):
    """(LatentDiffusion, cond maker n -> cond or None) for the attack-sweep benchmark."""
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import tiny_scheduler

    if size == "sd":
        model = LatentDiffusion(unet=sd_unet(), scheduler=tiny_scheduler(), device=device, dtype=unet_dtype)

        def cond(n):
            g = torch.Generator().manual_seed(0)
            return torch.randn(n, SD_TEXT_TOKENS, SD_UNET["cross_attention_dim"], generator=g).to(device)
        return model, cond
    model = LatentDiffusion(unet=small_unet(), scheduler=tiny_scheduler(), device=device, dtype=unet_dtype)
    return model, (lambda n: None)


def describe(module) -> dict:
    cfg = dict(module.config)
    keep = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "sample_size",
            "down_block_types", "up_block_types", "cross_attention_dim", "mid_block_add_attention")
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in keep}
    out["class"] = type(module).__name__
    out["parameters"] = sum(p.numel() for p in module.parameters())
    return out


# -- the "models" benchmark: the attack sweep per family, adapter vs bare denoiser --

FAMILY_ROWS = ("unet", "sd", "sdxl", "dit", "pixart-alpha", "pixart-sigma", "sd3", "flux")
# Rows: (name, family, tiny-folder kwargs, samples). Samples: the audit's chunk of 64 where the
# denoiser is cheap, fewer where it is not, so each row's sweep takes about half a second to a
# second of one core (FLUX's tiny transformer attends over 512 padded T5 tokens). The tiny DiT and
# PixArt transformers (~11k parameters) do less work per latent element than the sweep's own
# arithmetic on it (noise draws, norms, SecMI steps), so they get a second, "wide" row.
ROWS = (("unet", "unet", {}, 16), ("sd", "sd", {}, 8), ("sdxl", "sdxl", {}, 8), ("dit", "dit", {}, 64),
        ("pixart-alpha", "pixart-alpha", {}, 32), ("pixart-sigma", "pixart-sigma", {}, 32), ("sd3", "sd3", {}, 8),
        ("flux", "flux", {}, 2), ("dit-wide", "dit", {"wide": True}, 4),
        ("pixart-alpha-wide", "pixart-alpha", {"wide": True}, 4))
# "wide" rows: the tiny transformer's layout at 4 heads × 32 and 2 layers on 4×16×16 latents,
# built in memory (no VAE, no text encoder: PixArt gets T5-shaped embeddings), so the forward does
# a realistic amount of work per latent element, as real DiT / PixArt models do.
WIDE = dict(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=2,
            norm_num_groups=4, sample_size=16, patch_size=2)


def tiny_family_folder(family: str, root, **kwargs) -> Path:
    """The family's tiny folder (models.tiny / models.tiny_pipelines), written under root."""
    from diffaudit.models.tiny import save_tiny_model_folder
    from diffaudit.models.tiny_pipelines import save_tiny_pipeline

    d = Path(root) / f"{family}-{len(list(Path(root).iterdir()))}"
    if family in ("unet", "sd"):
        return save_tiny_model_folder(d, kind="latent" if family == "unet" else "text", **kwargs)
    builder, kw = {"pixart-alpha": ("pixart", {}), "pixart-sigma": ("pixart", {"sigma": True})}.get(family, (family, {}))
    return save_tiny_pipeline(d, builder, **kw, **kwargs)


def wide_model(family: str, device: str):
    """A "wide" DiT or PixArt-α (see WIDE) as a LatentDiffusion built from components."""
    import diffusers

    from diffaudit.models import LatentDiffusion

    torch.manual_seed(1)
    sched = diffusers.DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=2e-2, clip_sample=False)
    if family == "dit":
        den = diffusers.DiTTransformer2DModel(num_embeds_ada_norm=4, **WIDE)
    else:
        den = diffusers.PixArtTransformer2DModel(cross_attention_dim=128, caption_channels=32, **WIDE)
    return LatentDiffusion(transformer=den.eval().requires_grad_(False), scheduler=sched, device=device)


def conditions(model, n: int, seed: int = 0):
    """n conditions as the audit passes them: captions encoded once, labels, or None (PixArt
    without its T5: random 120-token embeddings under a full mask)."""
    if model.family.startswith("pixart") and model.conditioning == "embedding":
        g = torch.Generator().manual_seed(seed)
        e = torch.randn(n, 120, int(model.denoiser.config["caption_channels"]), generator=g)
        return torch.cat([e, torch.ones(n, 120, 1)], -1).to(model.device)
    if model.conditioning == "caption":
        from diffaudit.models.tiny import DEFAULT_CAPTIONS

        return model.encode_cond([DEFAULT_CAPTIONS[i % len(DEFAULT_CAPTIONS)] for i in range(n)])
    if model.conditioning == "label":
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, model.num_classes - 1, (n,), generator=g).to(model.device)
    return None


def bare_forward(model, cond, b: int, g: torch.Generator):
    """A zero-argument call of the raw denoiser on b rows, its inputs prepared here (outside any
    timing) as the family's diffusers pipeline passes them; returns the raw output."""
    den, dev, dt = model.denoiser, model.device, model.dtype
    x = torch.randn(b, *model.latent_shape, generator=g).to(dev, dt)
    t = torch.randint(1, model.num_train_timesteps, (b,), generator=g).to(dev)
    c = None if cond is None else cond[torch.arange(b) % cond.shape[0]]
    fam = model.family
    if fam == "unet":
        return lambda: den(x, t).sample
    if fam == "sd":
        e = c.to(dev, dt)
        return lambda: den(x, t, encoder_hidden_states=e).sample
    if fam == "sdxl":
        e, p, ids = model._split(c)
        kw = {"encoder_hidden_states": e.to(dt), "added_cond_kwargs": {"text_embeds": p.to(dt), "time_ids": ids}}
        return lambda: den(x, t, **kw).sample
    if fam == "dit":
        return lambda: den(x, timestep=t, class_labels=c).sample
    if fam.startswith("pixart"):
        kw = {"encoder_hidden_states": c[..., :-1].to(dt), "encoder_attention_mask": c[..., -1].round().long(),
              "added_cond_kwargs": model._added_cond(b)}
        return lambda: den(x, timestep=t, **kw).sample
    sigma = t.double() / model.num_train_timesteps
    e, p = (v.to(dt) for v in model._split(c))
    if fam == "sd3":
        ts = (sigma * model.num_train_timesteps).float()
        return lambda: den(hidden_states=x, timestep=ts, encoder_hidden_states=e, pooled_projections=p).sample
    if fam == "flux":
        from diffusers import FluxPipeline

        n, ch, h, w = x.shape
        kw = {"hidden_states": FluxPipeline._pack_latents(x, n, ch, h, w), "timestep": sigma.to(dt),
              "img_ids": FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, dev, dt),
              "txt_ids": torch.zeros(e.shape[1], 3, device=dev, dtype=dt), "encoder_hidden_states": e,
              "pooled_projections": p,
              "guidance": (torch.full((n,), float(model.guidance), device=dev)
                           if den.config.get("guidance_embeds") else None)}
        return lambda: den(**kw).sample
    raise ValueError(f"no bare forward for family {fam!r}")


def headline(r: dict) -> float:
    """The figure a ratio is judged by: CPU-time minimum where measured (on a shared machine a
    one-thread run's wall time also counts its waits for a core), else the wall-clock minimum."""
    return r.get("cpu_min", r["min"])


class CallSizes:
    """The model seen through a recorder of the rows of every eps call."""

    def __init__(self, model):
        self.model, self.alphas_cumprod, self.sizes = model, model.alphas_cumprod, []

    def eps(self, z_t, t, cond=None):
        self.sizes.append(z_t.shape[0])
        return self.model.eps(z_t, t, cond)


class BareForwards:
    """A stand-in model whose eps runs the bare forward prepared for that call size (its output,
    reshaped to ε's shape, is as good as any for timing): the sweep without the adapter."""

    def __init__(self, model, calls):
        self.alphas_cumprod, self.calls = model.alphas_cumprod, calls

    @torch.no_grad()
    def eps(self, z_t, t, cond=None):
        out = self.calls[z_t.shape[0]]()
        c = z_t.shape[1]
        out = out[:, :c] if out.dim() == 4 and out.shape[1] == 2 * c else out.reshape(z_t.shape)
        return out.float()


def bench_family(model, n: int, repeats: int | None, device: str) -> dict:
    """One row: the sweep through `model` vs the bare denoiser on the same rows (min over
    `repeats`; None: from the warm-up's time)."""
    from bench_common import measure, ratio
    from bench_sweep import ATTACKS, minimum_rows_per_sample

    from diffaudit.attacks import attack_sweep
    from diffaudit.audit import AuditConfig

    config = AuditConfig()
    grids = {a: config.grid(a) for a in ATTACKS}
    max_batch = config.batch_size * 8  # what run_audit passes
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, *model.latent_shape, generator=g).to(device)
    cond = conditions(model, n)
    ids = [f"s{i}" for i in range(n)]

    def sweep(m=model):
        for _ in attack_sweep(m, z, grids, attacks=ATTACKS, cond=cond, sample_ids=ids, seed=0,
                              interval=config.secmi_interval, max_batch=max_batch):
            pass

    counter = CallSizes(model)
    t0 = time.process_time()
    sweep(counter)  # also the warm-up
    if repeats is None:  # cheap rows get more repeats: about 1.5 s of CPU per candidate in all
        repeats = max(3, min(9, int(1.5 / max(time.process_time() - t0, 1e-3))))
    rows_min = n * minimum_rows_per_sample(grids, config.secmi_interval)
    # The bare baseline makes the very calls the sweep made (same rows per call, same order):
    # what is left is the adapter's and the sweep's own work. (Big calls cost more per row than
    # small ones on a CPU, so other call sizes would measure batching, not overhead.)
    sizes = counter.sizes
    calls = {b: bare_forward(model, cond, b, g) for b in set(sizes)}

    @torch.no_grad()
    def bare():
        for b in sizes:
            calls[b]()

    bare_model = BareForwards(model, calls)
    bare()
    times = measure({"sweep": sweep, "bare_denoiser": bare, "sweep_over_bare_forwards": lambda: sweep(bare_model)},
                    repeats, device, warmup=False)
    r = ratio(times, "sweep", "bare_denoiser")
    return {"family": model.family, "denoiser": type(model.denoiser).__name__,
            "parameters": sum(p.numel() for p in model.denoiser.parameters()), "latent": list(model.latent_shape),
            "conditioning": model.conditioning, "dtype": str(model.dtype).replace("torch.", ""), "samples": n,
            "rows_min": rows_min, "rows_sweep": sum(sizes), "calls": len(sizes), "max_batch": max_batch,
            "times": times, "overhead": r,
            # the adapter's share alone: the same sweep over the bare forwards (no adapter in between)
            "adapter_overhead": ratio(times, "sweep", "sweep_over_bare_forwards"),
            "sweep_machinery_overhead": ratio(times, "sweep_over_bare_forwards", "bare_denoiser"),
            "target": "overhead <= 1.15", "target_met": headline(r) <= 1.15 and sum(sizes) == rows_min}


def bench_families(device: str = "cpu", quick: bool = False, rows=None) -> dict:
    """The "models" benchmark: one row per family on its tiny folder (loaded as the audit loads
    it), plus the larger rows of `ROWS`; `rows`: names to run (default all)."""
    import tempfile

    from diffaudit.models import LatentDiffusion
    from diffaudit.models.library_logs import quiet_libraries

    out = {}
    with tempfile.TemporaryDirectory() as root:
        for name, fam, kw, n in ROWS:
            if rows is not None and name not in rows:
                continue
            if kw.get("wide"):
                model = wide_model(fam.split("-")[0], device)
            else:
                with quiet_libraries():
                    folder = tiny_family_folder(fam, root, **kw)
                model = LatentDiffusion.from_pretrained(folder, device=device)
            out[name] = bench_family(model, n=max(n // (2 if quick else 1), 1), repeats=1 if quick else None,
                                     device=device)
    fams = [r for r in out.values() if r["family"] in FAMILY_ROWS]
    return {"rows": out, "worst_overhead": max(headline(r["overhead"]) for r in fams),
            "worst_adapter_overhead": max(headline(r["adapter_overhead"]) for r in fams),
            "target": "overhead <= 1.15 for every row", "target_met": all(r["target_met"] for r in out.values())}


def _fig(x: dict) -> str:
    return (f"{x['cpu_min']:.3f}x (wall {x['min']:.3f}x; {x['median']:.3f}x)" if "cpu_min" in x
            else f"{x['min']:.3f}x ({x['median']:.3f}x)")


def family_table(result: dict) -> str:
    lines = ["| row | denoiser | params | latent | samples | sweep / bare denoiser (CPU min; wall min; median) | "
             "adapter only | rows | met |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['denoiser']} | {r['parameters']} | {'×'.join(map(str, r['latent']))} | "
                     f"{r['samples']} | {_fig(r['overhead'])} | {headline(r['adapter_overhead']):.3f}x | "
                     f"{r['rows_sweep']}/{r['rows_min']} | {r['target_met']} |")
    return "\n".join(lines)


def table_rows(result: dict) -> list[tuple]:
    """benchmarks/run.py's table rows (goal, figure, target, met, samples/s, TFLOP/s)."""
    per = ", ".join(f"{k} {headline(v['overhead']):.2f}x" for k, v in result["rows"].items())
    return [("models (sweep per family)", f"sweep / bare denoiser: {per}; adapter alone at most "
             f"{result['worst_adapter_overhead']:.2f}x", result["target"], "met" if result["target_met"] else "NOT met",
             "", "")]


def main(argv=None) -> int:
    import argparse
    import json
    import sys
    from datetime import datetime

    p = argparse.ArgumentParser(description="attack sweep per model family: adapter vs bare denoiser")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default=None, help="comma list of row names (default: all of ROWS)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = None if a.rows is None else tuple(f.strip() for f in a.rows.split(",") if f.strip())
    result = bench_families(a.device, a.quick, rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"models-{torch.device(a.device).type}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"threads": a.threads, "torch": torch.__version__, "result": result}, indent=1))
    print(family_table(result))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
