"""The command line as a user meets it: usage mistakes get click's usage message and exit 2, the
console prints the warnings results.json carries, `--no-progress` silences every progress bar
(diffaudit's, diffusers' and transformers'), and `import diffaudit` loads the core, not the CLI.
"""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffaudit import cli

BAR = re.compile(r"\d+%\||it/s|s/it")  # what any tqdm bar draws


def run_cli(args, capsys):
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args,message,usage", [
    (["audit", "--bogus"], "No such option: --bogus", True),
    (["audit", "--model"], "Option '--model' requires an argument", False),  # click shows no usage for this one
    (["split"], "Missing argument 'source'", True),
    (["no-such-command"], "No such command 'no-such-command'", True),
])
def test_usage_mistakes_print_clicks_message_and_exit_2(args, message, usage, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2, (out, err)
    assert f"Error: {message}" in err and ("Usage: diffaudit " in err) == usage, err
    assert "internal error" not in err + out and "Traceback" not in err


def test_usage_mistake_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "diffaudit", "audit", "--model", "m", "--bogus"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Usage:" in proc.stderr and "No such option: --bogus" in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr


def test_help_exits_0(capsys):
    code, out, _ = run_cli(["audit", "--help"], capsys)
    assert code == 0 and "--no-progress" in out and "--resize" in out


def test_import_diffaudit_loads_the_core_only():
    code = ("import sys, diffaudit, diffaudit.audit, diffaudit.data, diffaudit.models, diffaudit.report; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'click') or m == 'diffaudit.cli'); "
            "print(','.join(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def test_no_progress_context_silences_transformers_and_diffusers_bars(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    from diffaudit.models.tiny import tiny_clip_text

    enc, _ = tiny_clip_text()
    enc.save_pretrained(tmp_path / "te")
    capsys.readouterr()
    transformers.CLIPTextModel.from_pretrained(tmp_path / "te")
    assert "Loading weights" in capsys.readouterr().err  # the bar this test looks for exists
    with cli._progress_bars(False):
        assert not tlog.is_progress_bar_enabled() and not dlog.is_progress_bar_enabled()
        transformers.CLIPTextModel.from_pretrained(tmp_path / "te")
    assert not BAR.search(capsys.readouterr().err)
    assert tlog.is_progress_bar_enabled() and dlog.is_progress_bar_enabled()  # restored afterwards


def test_audit_console_shows_warnings_and_no_progress_silences_every_bar(tmp_path, capsys):
    pytest.importorskip("transformers")
    from diffaudit.models.tiny import save_tiny_model_folder

    model = save_tiny_model_folder(tmp_path / "sd", kind="text", image_size=8, image_channels=1)
    data = tmp_path / "imgs"
    data.mkdir()
    rows = []
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)).save(data / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"a photo of a digit {i}"})
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert run_cli(["split", f"folder:{data}", "--members", 4, "--out", tmp_path / "s"], capsys)[0] == 0
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(dict(attacks=["loss"], timesteps={"loss": [20]}, k=40, k_sweep=[0, 40], n_random=1,
                                   n_probes=1, svd_rank=1, svd_block_size=1, svd_power_iters=1, bootstrap=10,
                                   hf_filter=False, strata_random=1, chunk_size=4, batch_size=4)))
    args = ["audit", "--model", model, "--members", tmp_path / "s" / "members.json", "--holdout",
            tmp_path / "s" / "heldout.json", "--config", cfg, "--out", tmp_path / "out"]
    code, out, err = run_cli(args + ["--no-progress"], capsys)
    assert code == 0, err
    assert not BAR.search(err) and not BAR.search(out), err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["model"]["conditioning"] == "caption" and results["model"]["prediction_type"] == "epsilon"
    assert results["model"]["path"] == str(model) and len(results["model"]["weights_sha256"]) == 64
    warnings = results["warnings"]
    assert warnings  # 4 held-out samples: TPR@FPR warnings at least
    lines = out.strip().splitlines()
    assert lines[-1] == f"report: {tmp_path / 'out' / 'report.html'}"
    assert lines[-1 - len(warnings):-1] == [f"warning: {w}" for w in warnings]  # after the table
