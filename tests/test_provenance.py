"""What a cached or reported result was computed from: the weights actually audited key the
cache (a second model into the same out_dir is refused, or recomputed with overwrite, never
reused), and results.json names the model path, the weights hash, the prediction type and the
conditioning actually used, on the API path and the CLI path alike.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit.audit import SampleSet, model_folder_hash, model_weights_hash, run_audit
from diffaudit.audit.plan import from_dict
from diffaudit.errors import DataError, InputError

# A small but complete audit (two attacks, every mask kind, geometry): well under a second.
FAST = dict(attacks=["sima", "loss"], timesteps={"sima": [0, 20], "loss": [20]}, k=40, k_sweep=[0, 40],
            n_random=1, n_probes=1, svd_rank=1, svd_block_size=1, svd_power_iters=1, bootstrap=10,
            hf_filter=False, strata_random=1, chunk_size=8, batch_size=8)


def _model(prediction_type="epsilon", **kw):
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import tiny_autoencoder_kl, tiny_scheduler, tiny_unet2d

    vae = tiny_autoencoder_kl(in_channels=1, latent_channels=2, block_out_channels=(8, 8), sample_size=8,
                              attention=False, **{k: v for k, v in kw.items() if k == "scaling_factor"})
    unet = tiny_unet2d(in_channels=2, sample_size=4, block_out_channels=(8, 16))
    sched = tiny_scheduler(prediction_type, **{k: v for k, v in kw.items() if k == "num_train_timesteps"})
    return LatentDiffusion(unet=unet, scheduler=sched, vae=vae, **{k: v for k, v in kw.items() if k == "dtype"})


def _samples(seed=3, n=8):
    x = torch.rand(2 * n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return SampleSet.from_tensors(x[:n], x[n:])


def _chunks(out: Path, store: str) -> dict:
    arrays = {}
    for p in sorted((out / "cache" / store).glob("chunk-*.npz")):
        with np.load(p) as z:
            for k in z.files:
                arrays.setdefault(k, []).append(z[k])
    return {k: np.concatenate(v) for k, v in arrays.items()}


# -- the weights hash --

def test_weights_hash_follows_every_input_of_the_scores():
    base = _model()
    assert model_weights_hash(base) == model_weights_hash(_model())  # the same seeded weights, built twice
    edited = _model()
    with torch.no_grad():
        edited.vae.decoder.conv_out.bias[0] += 1e-3  # one decoder weight
    lora = _model()
    lora.loras = [("adapter.safetensors", 0.5)]
    variants = {"one weight": edited, "v-prediction twin": _model("v_prediction"),
                "bfloat16 UNet": _model(dtype="bfloat16"), "another schedule": _model(num_train_timesteps=500),
                "another VAE scaling factor": _model(scaling_factor=0.5), "a LoRA": lora}
    hashes = {name: model_weights_hash(m) for name, m in variants.items()}
    assert len(set(hashes.values()) | {model_weights_hash(base)}) == len(variants) + 1, hashes
    # and the twin really shares every weight with the base model: only the prediction type differs
    twin = variants["v-prediction twin"]
    for part in ("unet", "vae"):
        a, b = getattr(base, part).state_dict(), getattr(twin, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert base.prediction_type == "epsilon" and twin.prediction_type == "v_prediction"


def test_model_folder_hash_covers_transformer_and_lora_files(tmp_path):
    folder = tmp_path / "m"
    for part in ("transformer", "text_encoder_2", "tokenizer_3", "scheduler"):
        (folder / part).mkdir(parents=True)
        (folder / part / "weights.bin").write_bytes(b"x")
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"lora-1")
    before = model_folder_hash(folder)
    for part in ("transformer", "text_encoder_2", "tokenizer_3"):
        (folder / part / "weights.bin").write_bytes(b"y")
        after = model_folder_hash(folder)
        assert after != before, part
        before = after
    (folder / "README.md").write_text("not a component")  # neither are notes next to the model
    assert model_folder_hash(folder) == before
    with_lora = model_folder_hash(folder, lora=[(lora, 1.0)])
    assert with_lora != before and model_folder_hash(folder, lora=[(lora, 0.5)]) != with_lora
    lora.write_bytes(b"lora-2")
    assert model_folder_hash(folder, lora=[(lora, 1.0)]) != with_lora


# -- the audit cache (API) --

def test_a_second_model_into_the_same_out_dir_is_refused_or_recomputed(tmp_path):
    samples, cfg = _samples(), from_dict(FAST)
    out = tmp_path / "x"
    first = run_audit(_model(), samples, cfg, out_dir=out, progress=False, write_report=False)
    assert first.results["model"]["weights_sha256"] == model_weights_hash(_model())
    for store in ("geometry", "attacks"):
        manifest = json.loads((out / "cache" / store / "manifest.json").read_text())
        assert manifest["weights_sha256"] == model_weights_hash(_model()) and manifest["model_sha256"] is None
    first_stats = _chunks(out, "attacks")

    twin = _model("v_prediction")
    with pytest.raises(DataError, match=r"different run \(differs in: weights_sha256\)"):
        run_audit(twin, samples, cfg, out_dir=out, progress=False, write_report=False)
    again = run_audit(twin, samples, cfg, out_dir=out, overwrite=True, progress=False, write_report=False)
    fresh = run_audit(_model("v_prediction"), samples, cfg, out_dir=tmp_path / "fresh", progress=False,
                      write_report=False)
    got, ref = _chunks(out, "attacks"), _chunks(tmp_path / "fresh", "attacks")
    for k in ("stats__sima", "stats__loss"):
        np.testing.assert_array_equal(got[k], ref[k])  # the twin's own scores, bit for bit
        assert (got[k] != first_stats[k]).all(), k  # none of them is the first model's
    assert again.results["protocols"] == fresh.results["protocols"]
    assert again.results["model"]["prediction_type"] == "v_prediction"


def test_the_same_model_resumes_and_other_data_is_refused(tmp_path):
    samples, cfg = _samples(), from_dict(FAST)
    out = tmp_path / "x"
    model = _model()
    run_audit(model, samples, cfg, out_dir=out, progress=False, write_report=False)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("chunk-*.npz")}
    run_audit(model, samples, cfg, out_dir=out, progress=False, write_report=False)  # same object, after use
    run_audit(_model(), samples, cfg, out_dir=out, progress=False, write_report=False)  # same weights, rebuilt
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("chunk-*.npz")}
    # other images under the same default keys (member/0, …) are other samples
    with pytest.raises(DataError, match=r"differs in: samples"):
        run_audit(model, _samples(seed=4), cfg, out_dir=out, progress=False, write_report=False)


# -- provenance in results.json (API) --

def test_api_results_name_model_weights_prediction_type_and_conditioning(tmp_path):
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import save_tiny_model_folder

    folder = save_tiny_model_folder(tmp_path / "m", kind="class", image_size=8, image_channels=1,
                                    prediction_type="v_prediction", num_classes=4)
    model = LatentDiffusion.from_pretrained(folder, null_label=3)  # class 3: the unconditional query
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    samples = SampleSet.from_tensors(x[:4], x[4:], member_cond=labels[:4], heldout_cond=labels[4:])
    r = run_audit(model, samples, from_dict({**FAST, "chunk_size": 4}), out_dir=tmp_path / "a",
                  progress=False, write_report=False).results
    assert r["model"]["path"] == str(folder) and r["model"]["sha256"] is None
    assert r["model"]["weights_sha256"] == model_weights_hash(LatentDiffusion.from_pretrained(folder, null_label=3))
    assert r["model"]["prediction_type"] == "v_prediction" and r["model"]["conditioning"] == "label"
    assert r["data_conversions"] == {}
    on_disk = json.loads((tmp_path / "a" / "results.json").read_text())
    assert on_disk["model"] == r["model"]
    # cond="none" switches the labels off: the audit says so
    r = run_audit(model, samples, from_dict({**FAST, "chunk_size": 4, "cond": "none"}), out_dir=tmp_path / "b",
                  progress=False, write_report=False).results
    assert r["model"]["conditioning"] == "none"


def test_conditioning_rule_is_the_one_the_attacks_use():
    from diffaudit.audit.samples import cond_kind, conditioning_used

    class Model:
        def encode_cond(self, c):
            return c

    on, off = from_dict({**FAST, "cond": "auto"}), from_dict({**FAST, "cond": "none"})
    labels, captions, emb = torch.tensor([1, 2]), ["a", "b"], torch.zeros(2, 3, 4)
    assert [cond_kind(c) for c in (labels, captions, emb, None)] == ["label", "caption", "embedding", None]
    assert conditioning_used(labels, on, Model()) and not conditioning_used(labels, off, Model())
    assert not conditioning_used(labels, on, object()) and not conditioning_used(None, on, Model())


# -- the dynamics report folder --

class _LinearDenoiser(torch.nn.Module):
    """ε̂ = a fixed random linear map of (z, cond): a model with weights, no diffusers needed."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(8, 8)


class _DynamicsModel:
    latent_shape = (2, 2, 2)

    def __init__(self, seed):
        self.net = _LinearDenoiser(seed)
        self.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0).float()

    def eps(self, z, t, cond):
        with torch.no_grad():
            return (self.net.lin(z.flatten(1)) + cond.view(-1, 1)).view(z.shape)

    def encode_cond(self, captions):
        return torch.ones(len(captions), 1)

    def uncond(self, n):
        return torch.zeros(n, 1)


def test_dynamics_folder_refuses_another_model(tmp_path):
    from diffaudit.analysis import dynamics as dyn
    from diffaudit.analysis.dynamics.prompts import PromptItem

    items = [PromptItem("p0", "a cat"), PromptItem("p1", "a dog")]
    cfg = dyn.DynamicsConfig(seeds=2, steps=2, delays=(), loss_timesteps=2, loss_draws=1)
    out = tmp_path / "dyn"
    dyn.run_dynamics(_DynamicsModel(0), items, out, config=cfg, progress=False, plots=False)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "prompts").iterdir()}
    dyn.run_dynamics(_DynamicsModel(0), items, out, config=cfg, progress=False, plots=False)  # same weights: resumes
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "prompts").iterdir()}
    with pytest.raises(InputError, match=r"other settings \(weights_sha256\)"):
        dyn.run_dynamics(_DynamicsModel(1), items, out, config=cfg, progress=False, plots=False)
    settings = json.loads((out / "config.json").read_text())
    assert settings["weights_sha256"] == model_weights_hash(_DynamicsModel(0))
