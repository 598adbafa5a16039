"""`diffaudit demo`: split an embedded data set, train the tiny LDM on its members, audit, report.

Every stage is resumable: the split files, the training checkpoints and the audit's chunks are
all kept under the output folder, so rerunning the same command continues where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .plan import AuditConfig, attacks_for

DEMOS = {"digits": ("digits", "digits"), "fashion-mnist": ("fashion-mnist", "fashion-mnist")}

# A reduced demo for tests and quick looks: fewer samples, steps and timesteps.
QUICK = {"n": 64, "vae_steps": 30, "unet_steps": 30,
         "config": dict(t_max=60, t_stride=20, n_random=3, k_sweep=(0, 40, 80), bootstrap=100,
                        svd_rank=4, svd_block_size=4, svd_power_iters=1, hf_timesteps=(20, 40), strata_random=3)}


def run_demo(out_dir: str | Path = "diffaudit-report", data: str = "digits", seed: int = 0, quick: bool = False,
             config: AuditConfig | None = None, progress: bool = True, overwrite: bool = False,
             n_members: int | None = None, vae_steps: int | None = None, unet_steps: int | None = None,
             log=print):
    from ..data import load_split_pair, make_split, open_source, write_split
    from ..errors import ConfigError
    from ..models import LatentDiffusion
    from ..train import get_preset, train_ldm
    from . import SampleSet, model_folder_hash, run_audit
    from .plan import from_dict

    if data not in DEMOS:
        raise ConfigError(f"unknown demo data {data!r}; choose one of {', '.join(DEMOS)}")
    spec, preset_name = DEMOS[data]
    preset = get_preset(preset_name)
    out = Path(out_dir)
    n_m = n_members or (QUICK["n"] if quick else preset.n_members)
    n_h = n_m if n_members or quick else preset.n_holdout
    if quick:
        vae_steps = vae_steps or QUICK["vae_steps"]
        unet_steps = unet_steps or QUICK["unet_steps"]
        config = config or from_dict({**QUICK["config"], "seed": seed})
    config = config or AuditConfig(seed=seed, attacks=attacks_for(conditional=False))  # the demo LDM is unconditional

    t0 = time.perf_counter()
    # 1. The split: members / held-out files with content hashes (reused when already there).
    src = open_source(spec, size=preset.resolution, channels=preset.vae_config.get("in_channels", 1))
    mpath, hpath = out / "split" / "members.json", out / "split" / "heldout.json"
    if not (mpath.exists() and hpath.exists()):
        log(f"[1/3] splitting {spec}: {n_m} members / {n_h} held-out (seed {seed})")
        m, h = make_split(src, n_m, n_h, seed)
        write_split(m, mpath)
        write_split(h, hpath)
    members, heldout = load_split_pair(mpath, hpath)
    if len(members) != n_m or len(heldout) != n_h:
        raise ConfigError(f"{out / 'split'} holds a split of another size; use another --out or --overwrite")

    # 2. Train the tiny LDM on the members only.
    log(f"[2/3] training the {preset.name} LDM on {len(members)} members (resumable)")
    images = torch.stack([src.load(k)[0] for k in members.keys])
    split_info = {"members": {"path": str(mpath), "sha256": members.digest(), "n": len(members)},
                  "heldout": {"path": str(hpath), "sha256": heldout.digest(), "n": len(heldout)}}
    meta = train_ldm(images, preset, out / "model", seed=seed, progress=progress, vae_steps=vae_steps,
                     unet_steps=unet_steps, split_info=split_info)

    # 3. Audit members vs held-out.
    log("[3/3] auditing: geometry, attacks over t, masks, metrics, report")
    model = LatentDiffusion.from_pretrained(out / "model")
    samples = SampleSet.from_splits(members, heldout, image_shape=model.image_shape, cond="none")
    model_info = {"path": str(out / "model"), "preset": preset.name, "sha256": model_folder_hash(out / "model"),
                  "train": {"steps": meta.get("steps"), "final_losses": meta.get("final_losses"),
                            "times_s": meta.get("times_s")}}
    result = run_audit(model, samples, config, out_dir=out, model_info=model_info, split_info=split_info,
                       overwrite=overwrite, progress=progress)
    result.results["timing"]["demo_total_s"] = time.perf_counter() - t0
    return result
