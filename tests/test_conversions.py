"""What the model is shown: images of different sizes are refused (naming them) unless resizing
is asked for, and every conversion on the way (resize, alpha dropped, palette, 16-bit scaling,
other colour modes, grey <-> RGB) is counted in results.json and shown in the report.

Counts are checked against hand-derived expectations, and the header-only survey against what
actually decoding each image does.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffaudit.data import FolderSource, Transform, make_split, open_source, read_image, survey
from diffaudit.data.images import ImageInfo
from diffaudit.errors import DataError


def _grey(seed, size):
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _rgb(seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _modes_folder(root):
    """One 8x8 image per Pillow mode an image folder may hold; {file: conversions for a 3-channel
    model, derived by hand}."""
    root.mkdir()
    rgb = _rgb(0)
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(_grey(1, 8)).save(root / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((8, 8), 128, np.uint8)])).save(root / "rgba.png")
    Image.fromarray(rgb).quantize(16).save(root / "palette.png")
    pt = Image.fromarray(rgb).quantize(16)
    pt.info["transparency"] = 0
    pt.save(root / "palette_transparent.png", transparency=0)
    Image.fromarray(np.dstack([_grey(2, 8), _grey(3, 8)]), mode="LA").save(root / "grey_alpha.png")
    Image.fromarray((_grey(4, 8).astype(np.uint16) * 257)).save(root / "sixteen.png")
    Image.fromarray(_grey(5, 8) > 127).save(root / "bilevel.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    return {
        "rgb.png": set(), "grey.png": {"grayscale converted to RGB"},
        "rgba.png": {"alpha channel dropped"}, "palette.png": {"palette converted to RGB"},
        "palette_transparent.png": {"palette converted to RGB", "alpha channel dropped"},
        "grey_alpha.png": {"alpha channel dropped", "grayscale converted to RGB"},
        "sixteen.png": {"16-bit pixels scaled to [-1, 1]", "grayscale converted to RGB"},
        "bilevel.png": {"1-bit converted to grayscale", "grayscale converted to RGB"},
        "cmyk.jpg": {"CMYK converted to RGB"},
    }


def test_every_conversion_is_counted_and_the_header_survey_agrees_with_decoding(tmp_path):
    expected = _modes_folder(tmp_path / "modes")
    src = FolderSource(tmp_path / "modes", Transform(size=(8, 8), channels=3))
    counts = survey(src, src.keys())
    want = {}
    for conv in expected.values():
        for c in conv:
            want[c] = want.get(c, 0) + 1
    assert counts == dict(sorted(want.items()))
    for key in src.keys():  # the header alone tells what decoding will do
        header = src.probe(key)
        px = read_image(tmp_path / "modes" / key)
        assert header == px.info, key
        x = src.transform(px.to_tensor(), key)
        assert tuple(x.shape) == (3, 8, 8)
        assert set(header.conversions) | set(src.transform.conversions(header)) == expected[key], key
    # decoded values: the 16-bit image is scaled from 0..65535, not clipped at 255
    px = read_image(tmp_path / "modes" / "sixteen.png")
    ref = _grey(4, 8).astype(np.float64) * 257 / 65535 * 2 - 1
    np.testing.assert_allclose(px.to_tensor()[0].numpy(), ref, atol=1e-6)


def test_array_sources_count_alpha_and_16_bit(tmp_path):
    a = np.random.default_rng(0).integers(0, 65536, (5, 8, 8, 4), dtype=np.uint16)
    np.savez(tmp_path / "a.npz", images=a)
    counts = survey(open_source(f"npz:{tmp_path / 'a.npz'}", size=8, channels=1), [str(i) for i in range(5)])
    assert counts == {"16-bit pixels scaled to [-1, 1]": 5, "RGB converted to grayscale": 5, "alpha channel dropped": 5}
    assert survey(open_source("digits", channels=1), [str(i) for i in range(7)]) == {"resized to 16x16": 7}


@pytest.mark.parametrize("native,target,crop,name", [
    ((4, 4), (8, 8), "center", "resized to 8x8"),
    ((4, 8), (8, 8), "center", "resized and center-cropped to 8x8"),
    ((4, 8), (8, 8), "none", "stretched to 8x8"),
    ((8, 8), (8, 8), "center", None),
])
def test_transform_names_what_it_does(native, target, crop, name):
    tf = Transform(size=target, channels=1, crop=crop)
    x = torch.rand(1, *native) * 2 - 1
    y = tf(x)
    assert tuple(y.shape) == (1, *target)
    assert tf.conversions(ImageInfo(native, 1)) == ((name,) if name else ())
    assert (name is None) == torch.equal(x, y)  # nothing named, nothing changed


def _mixed_folder(root):
    """3 images of 4x4, 3 of 6x6 and 4 of 8x8 (grey)."""
    root.mkdir()
    sizes = [4] * 3 + [6] * 3 + [8] * 4
    for i, s in enumerate(sizes):
        Image.fromarray(_grey(i, s)).save(root / f"img{i}.png")
    return sizes


def test_mixed_sizes_are_refused_naming_files_and_sizes(tmp_path):
    from diffaudit.audit import SampleSet

    _mixed_folder(tmp_path / "imgs")
    src = FolderSource(tmp_path / "imgs")
    m, h = make_split(src, 5, 5, seed=0)
    with pytest.raises(DataError) as e:
        SampleSet.from_splits(m, h, image_shape=(1, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg and "images of different sizes" in msg and "10 images in 3 sizes" in msg
    for size, files in (("4x4", "img0.png, img1.png, img2.png"), ("6x6", "img3.png, img4.png, img5.png"),
                        ("8x8", "img6.png, img7.png, img8.png +1 more")):
        assert f"{size}: {files}" in msg, msg
    assert "--resize" in msg and "to 8x8" in msg
    s = SampleSet.from_splits(m, h, image_shape=(1, 8, 8), resize=True)
    assert s.conversions == {"resized to 8x8": 6}
    x, _ = s.load(range(len(s)))
    assert tuple(x.shape) == (10, 1, 8, 8)


def test_the_audit_cli_refuses_mixed_sizes_and_records_conversions_with_resize(tmp_path, capsys):
    from diffaudit.cli import main
    from diffaudit.models.tiny import save_tiny_model_folder

    sizes = _mixed_folder(tmp_path / "imgs")
    model = save_tiny_model_folder(tmp_path / "m", kind="latent", image_size=8, image_channels=1)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(dict(attacks=["loss"], timesteps={"loss": [20]}, k=40, k_sweep=[0, 40], n_random=1,
                                   n_probes=1, svd_rank=1, svd_block_size=1, svd_power_iters=1, bootstrap=10,
                                   hf_filter=False, strata_random=1, chunk_size=10, batch_size=10)))

    def run(*extra):
        try:
            main([str(a) for a in args + list(extra)])
            code = 0
        except SystemExit as e:
            code = e.code
        return (code, *capsys.readouterr())

    args = ["split", f"folder:{tmp_path / 'imgs'}", "--members", 5, "--out", tmp_path / "s"]
    assert run()[0] == 0
    args = ["audit", "--model", model, "--members", tmp_path / "s" / "members.json", "--holdout",
            tmp_path / "s" / "heldout.json", "--config", cfg, "--out", tmp_path / "out", "--no-progress"]
    code, out, err = run()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "images of different sizes" in lines[0] and "4x4: " in lines[0] and "--resize" in lines[0]
    code, out, err = run("--resize")
    assert code == 0, err
    n_resized = sum(s != 8 for s in sizes)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data_conversions"] == {"resized to 8x8": n_resized}
    assert f"resized to 8x8: {n_resized}" in (tmp_path / "out" / "report.html").read_text()
    assert f"resized to 8x8: {n_resized}" in (tmp_path / "out" / "summary.md").read_text()
