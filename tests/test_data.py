"""diffaudit.data: sources, hostile images, split files, the `split` command.

Pixels are compared with independent decodings (gzip + struct, scikit-learn, numpy, Pillow).
"""
import gzip
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffaudit.data import (ArraySource, FolderSource, IdxSource, Transform, check_disjoint, iter_batches,
                            load_split, load_split_pair, make_split, make_split_files, open_source, read_image,
                            read_split, write_split)
from diffaudit.errors import DataError

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _save(path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def _rgb(seed, size=16):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    for i in range(12):
        _save(root / ("sub" if i % 3 == 0 else "") / f"img{i:02d}.png", _rgb(i))
    return root


# -- sources --

def test_digits_match_scikit_learn():
    from sklearn.datasets import load_digits

    d = load_digits()
    src = open_source("digits", size=8)
    x, meta, _ = src.load("17")
    torch.testing.assert_close(x[0], torch.tensor(d.images[17] / 8 - 1, dtype=torch.float32))
    assert meta == {"label": int(d.target[17])} and len(src) == 1797
    big = open_source("digits")  # default 16x16
    y, _, sha = big.load("17")
    assert y.shape == (1, 16, 16) and y.min() >= -1 and y.max() <= 1
    assert sha == src.load("17")[2]  # hash of the native pixels, not of the resized image
    torch.testing.assert_close(y.mean(), x.mean(), atol=0.02, rtol=0)


def _parse_idx_gz(path):
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_idx_matches_a_direct_parse():
    src = open_source("fashion-mnist")
    assert len(src) == 70000
    imgs = _parse_idx_gz(FMNIST / "t10k-images-idx3-ubyte.gz")
    labels = _parse_idx_gz(FMNIST / "t10k-labels-idx1-ubyte.gz")
    for i in (0, 4321, 9999):
        x, meta, _ = src.load(f"t10k:{i}")
        torch.testing.assert_close(x[0], torch.tensor(imgs[i] / 127.5 - 1, dtype=torch.float32))
        assert meta["label"] == labels[i]
    train = _parse_idx_gz(FMNIST / "train-images-idx3-ubyte.gz")
    x, _, _ = src.load("train:59999")
    torch.testing.assert_close(x[0], torch.tensor(train[59999] / 127.5 - 1, dtype=torch.float32))
    with pytest.raises(DataError, match="no item 'train:60000'"):
        src.load("train:60000")


def _idx_bytes(a):
    return bytes([0, 0, 8, a.ndim]) + struct.pack(">" + "I" * a.ndim, *a.shape) + a.tobytes()


def test_idx_plain_gzip_and_broken(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 6, 7), dtype=np.uint8)
    plain = tmp_path / "x-images-idx3-ubyte"
    plain.write_bytes(_idx_bytes(a))
    (tmp_path / "x-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.arange(5, dtype=np.uint8))))
    src = IdxSource(plain)
    assert src.keys() == ["0", "1", "2", "3", "4"]
    x, meta, _ = src.load("3")
    torch.testing.assert_close(x[0], torch.tensor(a[3] / 127.5 - 1, dtype=torch.float32))
    assert meta == {"label": 3}
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(_idx_bytes(a)[:-10])
    with pytest.raises(DataError, match="bad-images-idx3-ubyte: IDX header promises"):
        IdxSource(bad)
    bad.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(DataError, match="not an IDX file"):
        IdxSource(bad)
    gz = tmp_path / "cut-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(a))[:-20])
    with pytest.raises(DataError, match="cut-images-idx3-ubyte.gz: corrupt or truncated"):
        IdxSource(gz)


def test_folder_metadata_csv_and_class_folders(tmp_path):
    root = tmp_path / "cap"
    for i in range(3):
        _save(root / f"{i}.jpg", _rgb(i), quality=95)
    (root / "metadata.csv").write_text('file_name,text,label\n0.jpg,"a cat, sitting",cat\n1.jpg,a dog,dog\n2.jpg,"say ""hi""",cat\n')
    (root / "notes.txt").write_text("ignored: not an image")
    src = FolderSource(root)
    assert src.keys() == ["0.jpg", "1.jpg", "2.jpg"]
    assert [src.meta(k) for k in src.keys()] == [
        {"caption": "a cat, sitting", "label": 0, "label_name": "cat"},
        {"caption": "a dog", "label": 1, "label_name": "dog"},
        {"caption": 'say "hi"', "label": 0, "label_name": "cat"}]
    x, _, _ = src.load("1.jpg")
    ref = np.asarray(Image.open(root / "1.jpg").convert("RGB"), dtype=np.float32) / 127.5 - 1
    torch.testing.assert_close(x, torch.tensor(ref).permute(2, 0, 1))
    cls = tmp_path / "cls"
    for name in ("zebra", "ant"):
        for i in range(2):
            _save(cls / name / f"{i}.png", _rgb(i)[..., 0])
    src = FolderSource(cls)
    assert [(k, src.meta(k)["label"]) for k in src.keys()] == [("ant/0.png", 0), ("ant/1.png", 0),
                                                                ("zebra/0.png", 1), ("zebra/1.png", 1)]
    (cls / "metadata.jsonl").write_text('{"file_name": "../../etc/passwd", "text": "x"}\n')
    with pytest.raises(DataError, match=r"metadata.jsonl:1: file_name '../../etc/passwd' escapes"):
        FolderSource(cls)
    (cls / "metadata.jsonl").write_text('{"file_name": "ant/0.png", "text": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"metadata.jsonl:2: not a JSON object"):
        FolderSource(cls)


def test_transforms_sizes_and_channels(tmp_path, folder):
    _save(folder / "odd.png", _rgb(99, size=20))
    src = FolderSource(folder)
    with pytest.raises(DataError, match=r"odd.png: image is 3x20x20 but .* is 3x16x16; mixed image sizes"):
        list(src)
    resized = FolderSource(folder, Transform(size=8, channels=1))
    assert {tuple(x.shape) for _, x, _ in resized} == {(1, 8, 8)}
    # rectangular → center crop: the middle of a horizontal gradient survives, the edges go
    grad = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))
    x = Transform(size=16)(read_image(_save(tmp_path / "g.png", grad)).to_tensor())
    assert x.shape == (1, 16, 16) and x[0, 0, 0] > -0.6 and x[0, 0, -1] < 0.6
    gray = Transform(channels=3)(torch.zeros(1, 4, 4))
    assert gray.shape == (3, 4, 4)
    rgb = torch.rand(3, 4, 4) * 2 - 1
    torch.testing.assert_close(Transform(channels=1)(rgb)[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _png_header_only(path, w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))
    return path


def test_hostile_image_files(tmp_path):
    good = _save(tmp_path / "ok.png", _rgb(0, 64))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.png: corrupt or truncated"):
        read_image(cut)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(os.urandom(500))
    with pytest.raises(DataError, match="junk.jpg: not an image"):
        read_image(junk)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(DataError, match="notes.png: not an image"):
        read_image(text)
    with pytest.raises(DataError, match="bomb.png: .*decompression bomb"):
        read_image(_png_header_only(tmp_path / "bomb.png", 30000, 30000))  # Pillow's own limit
    with pytest.raises(DataError, match=r"ok.png: 64x64 image exceeds the 1000-pixel cap"):
        read_image(good, max_pixels=1000)  # diffaudit's cap, checked before decoding
    with pytest.raises(DataError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    a = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 0 … 65535
    path = _save(tmp_path / "deep.png", a)
    assert Image.open(path).mode.startswith("I")
    assert np.asarray(Image.open(path).convert("L")).max() == 255  # Pillow's convert clips 16-bit at 255
    x = read_image(path).to_tensor()
    torch.testing.assert_close(x[0], torch.tensor(a / 32767.5 - 1, dtype=torch.float32))
    rgba = _save(tmp_path / "rgba.png", np.dstack([_rgb(1), np.full((16, 16), 7, np.uint8)]))
    torch.testing.assert_close(read_image(rgba).to_tensor(), torch.tensor(_rgb(1) / 127.5 - 1, dtype=torch.float32).permute(2, 0, 1))


def test_npz_and_npy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)  # NCHW
    np.savez(tmp_path / "a.npz", images=u8, labels=np.arange(6))
    src = open_source(f"npz:{tmp_path / 'a.npz'}")
    x, meta, _ = src.load("4")
    torch.testing.assert_close(x, torch.tensor(u8[4] / 127.5 - 1, dtype=torch.float32))
    assert meta == {"label": 4}
    f01 = rng.random((4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", f01)
    torch.testing.assert_close(open_source(str(tmp_path / "f.npy")).load("2")[0][0], torch.tensor(f01[2] * 2 - 1))
    cases = {
        "five.npy": (np.zeros((2, 8, 8, 5), np.uint8), "5 channels"),
        "ints.npy": (np.zeros((2, 8, 8), np.int64), "explicit value_range"),
        "wide.npy": (np.full((2, 8, 8), 3.0), r"float pixels span \[3, 3\]"),
        "nan.npy": (np.array([np.zeros((8, 8)), np.full((8, 8), np.nan)]), "item 1 has NaN"),
        "obj.npy": (np.array([None, 1], dtype=object), "not a readable"),
    }
    for name, (arr, msg) in cases.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
        with pytest.raises(DataError, match=f"{name}: .*{msg}"):
            ArraySource(tmp_path / name)
    ints = ArraySource(tmp_path / "ints.npy", value_range=(0, 16))
    assert ints.load("0")[0].min() == -1
    with pytest.raises(DataError, match="no item '../../etc/passwd'"):
        src.load("../../etc/passwd")
    with pytest.raises(DataError, match="cannot convert 3 channels to 4|channel count must be 1 or 3"):
        open_source(f"npz:{tmp_path / 'a.npz'}", channels=4)


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    imgs = [Image.fromarray(_rgb(i)) for i in range(4)]
    ds = datasets.Dataset.from_dict({"image": imgs, "text": [f"caption {i}" for i in range(4)]},
                                    features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    src = open_source(f"hf:{tmp_path / 'hf'}")
    x, meta, _ = src.load("2")
    torch.testing.assert_close(x, torch.tensor(_rgb(2) / 127.5 - 1, dtype=torch.float32).permute(2, 0, 1))
    assert meta == {"caption": "caption 2"}
    m, h = make_split(src, 2, 2, seed=1)
    assert sorted(m.keys + h.keys) == ["0", "1", "2", "3"]


# -- splits --

def test_split_round_trip_and_determinism(tmp_path, folder):
    mp, hp = make_split_files(f"folder:{folder}", 5, 4, seed=3, out_dir=tmp_path / "s")
    m, h = load_split_pair(mp, hp)
    assert (len(m), len(h)) == (5, 4) and not set(m.keys) & set(h.keys)
    again = make_split_files(f"folder:{folder}", 5, 4, seed=3, out_dir=tmp_path / "s2")
    assert again[0].read_text() == mp.read_text()
    other = make_split(FolderSource(folder), 5, 4, seed=4)[0]
    assert other.keys != m.keys
    batches = list(iter_batches(m, batch_size=2, image_shape=(3, 8, 8)))
    assert [b.keys for b in batches] == [m.keys[:2], m.keys[2:4], m.keys[4:]]
    assert batches[0].images.shape == (2, 3, 8, 8) and batches[0].captions is None
    direct = FolderSource(folder, Transform(size=8)).load(m.keys[3])[0]
    torch.testing.assert_close(batches[1].images[1], direct)
    # the data moved: root relocates it
    moved = tmp_path / "moved"
    folder.rename(moved)
    with pytest.raises(DataError, match="image folder does not exist"):
        load_split(mp)
    assert load_split(mp, root=moved).keys == m.keys
    assert m.digest() == load_split(mp, root=moved).digest()


def test_split_detects_changed_images_and_overlap(tmp_path, folder):
    mp, hp = make_split_files(f"folder:{folder}", 4, 4, seed=0, out_dir=tmp_path / "s")
    m, h = load_split_pair(mp, hp)
    # the same picture under another name, put in held-out: overlap by content hash
    _save(folder / "copy.png", np.asarray(Image.open(folder / m.keys[0])))
    hd = json.loads(hp.read_text())
    hd["items"].append({"key": "copy.png", "sha256": m.hashes[0]})
    hp.write_text(json.dumps(hd))
    with pytest.raises(DataError, match=r"overlapping splits: held-out item 'copy.png' .* member '" + m.keys[0]):
        load_split_pair(mp, hp)
    # re-saving in another format keeps the pixel hash; changing pixels breaks it
    changed = folder / m.keys[1]
    _save(changed, np.asarray(Image.open(changed)), compress_level=0)
    load_split(mp)
    _save(changed, _rgb(123))
    with pytest.raises(DataError, match=f"{changed}: content changed since the split was made"):
        load_split(mp)
    with pytest.raises(DataError, match="content changed"):
        list(iter_batches(read_split(mp)))
    # duplicates in the source are skipped when drawing a split
    m2, h2 = make_split(FolderSource(folder), 6, 6, seed=0)
    check_disjoint(m2, h2)
    assert len(set(m2.hashes + h2.hashes)) == 12 and m2.extra.get("skipped_duplicates", 0) + len(m2) + len(h2) >= 12


def test_split_paths_escaping_the_root(tmp_path, folder):
    mp, _ = make_split_files(f"folder:{folder}", 3, 3, seed=0, out_dir=tmp_path / "s")
    outside = _save(tmp_path / "secret.png", _rgb(5))
    (folder / "link.png").symlink_to(outside)
    data = json.loads(mp.read_text())
    for key, msg in [("../../etc/passwd", "escapes the data root"), ("/etc/passwd", "escapes the data root"),
                     ("link.png", "links outside the data root"), ("sub/none.png", "file missing")]:
        data["items"][0] = {"key": key, "sha256": "0" * 64}
        mp.write_text(json.dumps(data))
        with pytest.raises(DataError, match=msg):
            load_split(mp, verify=False)
    assert "link.png" in FolderSource(folder).keys()
    with pytest.raises(DataError, match="links outside"):
        FolderSource(folder).load("link.png")


def test_malformed_split_files(tmp_path):
    p = tmp_path / "s.json"
    good = {"format": "diffaudit.split/1", "role": "members", "seed": 0, "source": {"spec": "digits"},
            "items": [{"key": "1", "sha256": "a" * 64}]}
    bad = [
        (b"\xff\xfe garbage", "not a JSON split file"),
        (b"[1, 2]", "is a JSON object"),
        (b"[" * 100000, "not a JSON split file"),
        ({**good, "items": []}, "lists no items"),
        ({**good, "role": "member"}, "role must be"),
        ({**good, "seed": "0"}, "seed must be an integer"),
        ({**good, "source": "digits"}, "source must be"),
        ({**good, "itmes": []}, r"unknown keys \['itmes'\]"),
        ({**good, "items": [{"key": "1"}]}, "item 0 must be"),
        ({**good, "items": [{"key": 1, "sha256": "a" * 64}]}, "item 0 must be"),
        ({**good, "items": [good["items"][0]] * 2}, "listed twice"),
        ({k: v for k, v in good.items() if k != "format"}, "not a diffaudit split file"),
    ]
    for content, msg in [({**good, "source": {"spec": "folder:/tmp", "options": {"max_pixels": "x"}}}, "unknown source option"),
                         ({**good, "source": {"spec": "digits", "options": {"caption_column": 5}}}, "unknown source option"),
                         ({**good, "source": {"spec": "nope:/x"}}, "unknown data source")]:
        p.write_text(json.dumps(content))
        with pytest.raises(DataError, match=msg):
            load_split(p)
    for content, msg in bad:
        p.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        with pytest.raises(DataError, match=msg):
            read_split(p)
    with pytest.raises(DataError, match="split file not found"):
        read_split(tmp_path / "none.json")
    p.write_text(json.dumps({**good, "role": "heldout"}))
    with pytest.raises(DataError, match="is a heldout split, expected members"):
        load_split_pair(p, p)


def test_split_loader_fuzz(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    p = tmp_path / "fuzz.json"
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                          max_leaves=12)
    near = st.fixed_dictionaries({"format": st.just("diffaudit.split/1"), "role": st.sampled_from(["members", "x"]),
                                  "seed": values, "source": values | st.fixed_dictionaries({"spec": st.sampled_from(["digits", f"folder:{tmp_path}"]), "options": values}),
                                  "items": st.lists(st.fixed_dictionaries({"key": values, "sha256": values}), max_size=3)})

    @hypothesis.settings(max_examples=50, deadline=None, database=None)
    @hypothesis.given(st.binary(max_size=200) | values.map(lambda v: json.dumps(v).encode())
                      | near.map(lambda v: json.dumps(v).encode()))
    def run(content):
        p.write_bytes(content)
        try:
            load_split(p)
        except DataError:
            pass

    run()


def test_split_command(tmp_path, capsys, folder):
    from diffaudit.cli import main

    main(["split", "digits", "--members", "20", "--heldout", "10", "--seed", "7", "--out", str(tmp_path / "d")])
    m, h = load_split_pair(tmp_path / "d" / "members.json", tmp_path / "d" / "heldout.json")
    assert (len(m), len(h), m.seed) == (20, 10, 7)
    _save(folder / "zz_broken.png", _rgb(0))
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["split", f"folder:{folder}", "--members", "6", "--heldout", "7", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0
    assert err.startswith("error: ") and "zz_broken.png" in err and "Traceback" not in err
