"""Model folders through the command line: refusals are one line (stdout and stderr together,
file descriptors captured, so the libraries' own handlers are seen too), and every supported
family audits end to end with a reduced config."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffaudit import cli
from diffaudit.models.tiny import save_tiny_model_folder

pytest.importorskip("transformers")

REDUCED = dict(timesteps={"sima": [0, 20], "loss": [20], "pia": [20], "secmi": [0, 20]}, k=40, k_sweep=[0, 40],
               n_random=2, n_probes=2, svd_rank=2, svd_block_size=2, svd_power_iters=1, bootstrap=20,
               hf_timesteps=[20], strata_random=2, chunk_size=4, batch_size=4)
CAPTIONS = ("a red shirt", "an ankle boot", "a blue shoe", "a bag on a table")


def run_cli(args, capfd) -> tuple[int, list[str]]:
    """`diffaudit ARGS` in this process: (exit code, non-empty lines of stdout + stderr)."""
    capfd.readouterr()
    code = 0
    try:
        cli.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capfd.readouterr()
    return code, [ln for ln in (out + err).splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16² RGB images with captions and labels, split 4 / 4 with `diffaudit split`, and a reduced config."""
    root = tmp_path_factory.mktemp("family-audits")
    (root / "imgs").mkdir()
    rows = []
    for i in range(8):
        img = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "imgs" / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": CAPTIONS[i % 4], "label": i % 3}))
    (root / "imgs" / "metadata.jsonl").write_text("\n".join(rows))
    try:
        cli.main(["split", f"folder:{root / 'imgs'}", "--members", "4", "--out", str(root / "splits")])
    except SystemExit as e:
        assert e.code in (0, None)
    (root / "config.json").write_text(json.dumps(REDUCED))
    return root


def audit(data: Path, model: Path, capfd, out: Path, *extra):
    return run_cli(["audit", "--model", model, "--members", data / "splits" / "members.json",
                    "--holdout", data / "splits" / "heldout.json", "--config", data / "config.json",
                    "--out", out, "--no-progress", *extra], capfd)


def _pickle_component(folder: Path, weights: str) -> None:
    from safetensors.torch import load_file

    st = folder / weights
    torch.save(load_file(st), st.with_suffix(".bin"))
    st.unlink()


@pytest.mark.parametrize("kind, component, weights", [
    ("latent", "unet", "diffusion_pytorch_model.safetensors"),
    ("text", "unet", "diffusion_pytorch_model.safetensors"),
    ("text", "text_encoder", "model.safetensors"),
])
def test_pickled_checkpoint_is_refused_in_exactly_one_line(data, tmp_path, capfd, kind, component, weights):
    d = save_tiny_model_folder(tmp_path / "pickled", kind)
    _pickle_component(d / component, weights)
    code, lines = audit(data, d, capfd, tmp_path / "out")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {d / component}: cannot load ")
    assert f"pickled weights refused: {Path(weights).with_suffix('.bin').name} is a pickle" in lines[0]
    assert not (tmp_path / "out").exists()


def test_unsupported_pipeline_folder_is_one_line(data, tmp_path, capfd):
    d = save_tiny_model_folder(tmp_path / "k", "text")
    index = json.loads((d / "model_index.json").read_text())
    (d / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyV22Pipeline"}))
    code, lines = audit(data, d, capfd, tmp_path / "out")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {d / 'model_index.json'}: pipeline KandinskyV22Pipeline is not supported (supported: ")


def test_stable_diffusion_pipeline_folder_audits_end_to_end(data, tmp_path, capfd):
    d = save_tiny_model_folder(tmp_path / "sd", "text")
    code, lines = audit(data, d, capfd, tmp_path / "out")
    assert code == 0, lines
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["model"]["kind"] == "latent" and res["model"]["latent_shape"] == [4, 8, 8]
    assert {m["attack"] for m in res["metrics"]} >= {"sima", "loss", "pia", "secmi"}


@pytest.mark.parametrize("family, conditioning", [("sdxl", "caption"), ("dit", "label"), ("pixart", "caption"),
                                                  ("sd3", "caption"), ("flux", "caption")])
def test_every_family_audits_end_to_end(data, tmp_path, capfd, family, conditioning):
    from diffaudit.models.tiny_pipelines import save_tiny_pipeline

    d = save_tiny_pipeline(tmp_path / family, family)
    code, lines = audit(data, d, capfd, tmp_path / "out")
    assert code == 0, lines
    assert lines[-1].startswith("report: ") and not any("Loading" in ln or "[transformers]" in ln for ln in lines)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["model"]["kind"] == "latent" and res["model"]["conditioning"] == conditioning
    assert res["model"]["prediction_type"] == ("flow_prediction" if family in ("sd3", "flux") else "epsilon")
    assert {m["attack"] for m in res["metrics"]} >= {"sima", "loss", "pia", "secmi"}
    assert all(0 <= m["auc"] <= 1 for m in res["metrics"] if m.get("auc") is not None)


def test_lora_through_the_cli_changes_the_audited_weights(data, tmp_path, capfd):
    pytest.importorskip("peft")
    from diffaudit.audit.fingerprint import model_folder_hash, model_weights_hash
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny_pipelines import save_tiny_lora

    d = save_tiny_model_folder(tmp_path / "sd", "text")
    file, _ = save_tiny_lora(d, tmp_path / "lora")
    code, lines = audit(data, d, capfd, tmp_path / "out", "--lora", f"{file}:0.5")
    assert code == 0, lines
    got = json.loads((tmp_path / "out" / "results.json").read_text())["model"]
    assert got["sha256"] == model_folder_hash(d, lora=[(file, 0.5)]) != model_folder_hash(d)
    assert got["weights_sha256"] == model_weights_hash(LatentDiffusion.from_pretrained(d, lora=[(file, 0.5)]))
    assert got["weights_sha256"] != model_weights_hash(LatentDiffusion.from_pretrained(d))
    code, lines = audit(data, d, capfd, tmp_path / "bad", "--lora", str(tmp_path / "missing.safetensors"))
    assert code == 2 and lines == [f"error: {tmp_path / 'missing.safetensors'}: LoRA file does not exist"]
