"""Hostile and broken input through the command line: one clear `error:` line naming the file and
the problem, exit code 2, no traceback; and user strings escaped in report.html.

The commands run in this process through `diffaudit.cli.main` (what `python -m diffaudit` runs);
one case also runs as a real subprocess.
"""
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_CONFIG, reference_results, run_cli, subprocess_env, workspace


def _png(path: Path, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return path


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A valid PNG header declaring w x h pixels with almost no data: a decompression bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def folder_split(tmp_path_factory):
    """An image folder and its split files (made with `diffaudit split`)."""
    root = tmp_path_factory.mktemp("cli-errors")
    for i in range(10):
        _png((root / "imgs").mkdir(exist_ok=True) or root / "imgs" / f"img{i}.png", i)
    code, _, _ = run_cli(["split", f"folder:{root / 'imgs'}", "--members", 4, "--out", root / "splits"])
    assert code == 0
    return root


@pytest.fixture
def case(folder_split, tmp_path_factory, tmp_path):
    """A private copy of the data, splits and model to break; `run()` audits it via the CLI."""
    shutil.copytree(folder_split / "imgs", tmp_path / "imgs")
    shutil.copytree(folder_split / "splits", tmp_path / "splits")
    ws = workspace(tmp_path_factory)

    class Case:
        root = tmp_path
        data = tmp_path / "imgs"
        members = tmp_path / "splits" / "members.json"
        heldout = tmp_path / "splits" / "heldout.json"
        model = ws["model"]
        config = ws["config"]

        def split(self, which="members"):
            return json.loads(getattr(self, which).read_text())

        def write(self, which, data):
            getattr(self, which).write_text(json.dumps(data))

        def run(self, capsys, debug=False):
            args = [*(["--debug"] if debug else []), "audit", "--model", self.model, "--members", self.members, "--holdout", self.heldout,
                    "--config", self.config, "--data-root", self.data, "--out", self.root / "out", "--no-progress"]
            return run_cli(args, capsys)

    return Case()


def assert_one_error_line(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


# -- data: split files naming things they should not, and broken image files --

def test_split_key_escaping_the_data_root(case, capsys):
    m = case.split()
    m["items"][0] = {"key": "../../etc/passwd", "sha256": "0" * 64}
    case.write("members", m)
    assert_one_error_line(*case.run(capsys)[::2], "'../../etc/passwd' escapes the data root", "members.json")


def test_symlink_out_of_the_data_root(case, capsys):
    key = case.split()["items"][0]["key"]
    outside = _png(case.root / "secret.png", 99)
    (case.data / key).unlink()
    (case.data / key).symlink_to(outside)
    assert_one_error_line(*case.run(capsys)[::2], key, "links outside the data root", "members.json")


def test_decompression_bomb_is_refused_before_decoding(case, capsys):
    # 64 Mpx passes Pillow's own check (89 Mpx) but not diffaudit's cap (50 Mpx), read from the header
    _png_header_only(case.data / "bomb.png", 8000, 8000)
    m = case.split()
    m["items"][0] = {"key": "bomb.png", "sha256": "0" * 64}
    case.write("members", m)
    assert_one_error_line(*case.run(capsys)[::2], "bomb.png: 8000x8000 image exceeds the 50000000-pixel cap")
    # 900 Mpx: Pillow refuses it first; `diffaudit split` over the folder meets it
    _png_header_only(case.data / "bomb.png", 30000, 30000)
    code, _, err = run_cli(["split", f"folder:{case.data}", "--members", 4, "--out", case.root / "s2"], capsys)
    assert_one_error_line(code, err, "bomb.png", "decompression bomb")


def test_truncated_image(case, capsys):
    path = case.data / case.split()["items"][1]["key"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_one_error_line(*case.run(capsys)[::2], path.name, "corrupt or truncated image")


def test_non_image_file(case, capsys):
    path = case.data / case.split("heldout")["items"][0]["key"]
    path.write_text("#!/bin/sh\necho not a picture\n")
    assert_one_error_line(*case.run(capsys)[::2], path.name, "not an image file")


def test_changed_image_content(case, capsys):
    path = case.data / case.split()["items"][2]["key"]
    _png(path, 1234)
    assert_one_error_line(*case.run(capsys)[::2], path.name, "content changed since the split was made")


def test_wrong_channel_count(tmp_path, capsys):
    np.savez(tmp_path / "two.npz", images=np.zeros((8, 8, 8, 2), dtype=np.uint8))
    code, _, err = run_cli(["split", f"npz:{tmp_path / 'two.npz'}", "--members", 2, "--out", tmp_path / "s"], capsys)
    assert_one_error_line(code, err, "two.npz", "2 channels; expected 1, 3 or 4")


def test_empty_and_overlapping_splits(case, capsys):
    m = case.split()
    case.write("members", {**m, "items": []})
    assert_one_error_line(*case.run(capsys)[::2], "members.json", "lists no items")
    case.write("members", m)
    h = case.split("heldout")
    h["items"][0] = m["items"][0]
    case.write("heldout", h)
    assert_one_error_line(*case.run(capsys)[::2], "overlapping splits", m["items"][0]["key"])


def test_unknown_config_key(case, capsys):
    cfg = case.root / "typo.json"
    cfg.write_text(json.dumps({"k_swep": [0, 40]}))
    case.config = cfg
    assert_one_error_line(*case.run(capsys)[::2], "typo.json", "'k_swep' (did you mean 'k_sweep'?)")


# -- models --

def test_missing_model_folder(case, capsys):
    case.model = case.root / "no-such-model"
    assert_one_error_line(*case.run(capsys)[::2], "no-such-model: model folder does not exist")


def test_folder_that_is_not_a_diffusers_model(case, capsys):
    bad = case.root / "bert"
    shutil.copytree(case.model, bad)
    (bad / "unet" / "config.json").write_text(json.dumps({"_class_name": "BertModel", "hidden_size": 8}))
    case.model = bad
    assert_one_error_line(*case.run(capsys)[::2], "unet/config.json: not a diffusers UNet config")


def test_pickled_only_checkpoint_is_refused(case, capsys, pickle_payload):
    bad = case.root / "pickled"
    shutil.copytree(case.model, bad)
    (bad / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = case.root / "payload-ran"
    torch.save({"conv_in.weight": pickle_payload(marker)}, bad / "unet" / "diffusion_pytorch_model.bin")
    case.model = bad
    assert_one_error_line(*case.run(capsys)[::2], "pickled/unet: cannot load UNet weights", "pickled weights refused")
    assert not marker.exists()


def test_nan_model_outputs_name_the_samples(case, capsys):
    from safetensors.torch import load_file, save_file

    bad = case.root / "nan"
    shutil.copytree(case.model, bad)
    st = bad / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(st)
    weights["conv_out.bias"] = torch.full_like(weights["conv_out.bias"], float("nan"))
    save_file(weights, st)
    case.model = bad
    first = case.split()["items"][0]["key"]
    second = case.split()["items"][1]["key"]  # chunk 0 holds the first two members
    line = assert_one_error_line(*case.run(capsys)[::2], "NaN/Inf", f"chunk samples: {first}, {second}")
    assert "batch row" in line or first in line.split("(chunk")[0]
    # --debug adds the traceback, for a bug report
    code, _, err = case.run(capsys, debug=True)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


# -- a real process, and what the report shows --

def test_real_process_exit_code_and_single_line(case):
    m = case.split()
    m["items"][0] = {"key": "../../etc/passwd", "sha256": "0" * 64}
    case.write("members", m)
    args = ["audit", "--model", case.model, "--members", case.members, "--holdout", case.heldout,
            "--data-root", case.data, "--out", case.root / "out"]
    proc = subprocess.run([sys.executable, "-m", "diffaudit", *map(str, args)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert_one_error_line(proc.returncode, proc.stderr, "escapes the data root")


def test_few_heldout_samples_warn_about_tpr_at_0_1_percent(tmp_path_factory):
    warnings = reference_results(tmp_path_factory)["warnings"]
    assert any("TPR@0.1%FPR" in w and "1000 held-out" in w and "has 10" in w for w in warnings), warnings


def test_captions_and_file_names_are_escaped_in_the_report(tmp_path, capsys):
    pytest.importorskip("transformers")
    from diffaudit.models.tiny import save_tiny_model_folder

    model = save_tiny_model_folder(tmp_path / "sd", kind="text", image_size=8, image_channels=1)
    data = tmp_path / "imgs"
    data.mkdir()
    names = [f"img{i}.png" for i in range(7)] + ["<img src=x onerror=alert(2)>.png"]
    rows = []
    for i, name in enumerate(names):
        _png(data / name, i)
        rows.append({"file_name": name, "text": "<script>alert(1)</script>" if i % 2 == 0 else f"a photo of {i}"})
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    code, _, err = run_cli(["split", f"folder:{data}", "--members", 4, "--out", tmp_path / "splits"], capsys)
    assert code == 0, err
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps({**TINY_CONFIG, "chunk_size": 8, "batch_size": 8}))
    code, _, err = run_cli(["audit", "--model", model, "--members", tmp_path / "splits" / "members.json",
                            "--holdout", tmp_path / "splits" / "heldout.json", "--config", cfg_path,
                            "--out", tmp_path / "out", "--no-progress"], capsys)
    assert code == 0, err
    html = (tmp_path / "out" / "report.html").read_text()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    shown = results["at_risk"]["members"] + results["at_risk"]["heldout_false_positives"]
    assert any(r.get("caption") == "<script>alert(1)</script>" for r in shown)  # the report has it to show
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror=alert(2)&gt;.png" in html
