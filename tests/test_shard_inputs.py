"""The reader side of `fastft shard`: what each kind of input becomes (by pixel value, read back from a real store),
what is rejected and why, and that nothing in a tree is left out unseen or aborts the run."""
import csv
import io
import os
import random
import struct
import subprocess
import sys
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import fastft
from fastft.data.shard import ShardConfig, write_store
from fastft.data.shard.convert import MAX_PIXELS, _process
from fastft.data.store import open_store
from fastft.data.synth import synth
from fastft.data.taxonomy import load
from fastft.errors import FastFTError

S = (20, 20)
CFG = ShardConfig(resize="24x24", allow_missing=True)


def _p(colours):
    im = Image.new("P", S, 1)
    im.putpalette([c for rgb in colours for c in rgb] + [0] * (768 - 3 * len(colours)))
    return im


def _u16(v, mode="I;16"):
    im = Image.fromarray(np.full(S[::-1], v, np.uint16))  # mode I;16
    return im if mode == "I;16" else im.convert(mode)


# file name -> (image, save keyword arguments, the RGB expected in the store, worked out by hand)
MODES = {
    "bilevel-white.png": (Image.new("1", S, 1), {}, (255, 255, 255)),
    "bilevel-black.bmp": (Image.new("1", S, 0), {}, (0, 0, 0)),
    "gray.png": (Image.new("L", S, 77), {}, (77, 77, 77)),
    "gray.JPEG": (Image.new("L", S, 77), {"format": "JPEG", "quality": 95}, (77, 77, 77)),
    "la-opaque.png": (Image.new("LA", S, (100, 255)), {}, (100, 100, 100)),
    "la-clear.png": (Image.new("LA", S, (100, 0)), {}, (255, 255, 255)),       # alpha: composited on white
    "la-half.png": (Image.new("LA", S, (0, 128)), {}, (127, 127, 127)),        # 0 * 128/255 + 255 * 127/255
    "palette.png": (_p([(0, 0, 0), (20, 200, 40)]), {}, (20, 200, 40)),
    "palette-transparent.png": (_p([(0, 0, 0), (20, 200, 40)]), {"transparency": 1}, (255, 255, 255)),
    "palette.gif": (_p([(0, 0, 0), (20, 200, 40)]), {}, (20, 200, 40)),
    "rgb.png": (Image.new("RGB", S, (10, 200, 30)), {}, (10, 200, 30)),
    "rgb.bmp": (Image.new("RGB", S, (10, 200, 30)), {}, (10, 200, 30)),
    "rgb.tif": (Image.new("RGB", S, (10, 200, 30)), {}, (10, 200, 30)),
    "rgb.webp": (Image.new("RGB", S, (10, 200, 30)), {"lossless": True}, (10, 200, 30)),
    "png-named.JPEG": (Image.new("RGB", S, (10, 200, 30)), {"format": "PNG"}, (10, 200, 30)),
    "rgba-half.png": (Image.new("RGBA", S, (255, 0, 0, 128)), {}, (255, 127, 127)),
    "rgba-clear.webp": (Image.new("RGBA", S, (0, 0, 0, 0)), {"lossless": True}, (255, 255, 255)),
    "cmyk.JPEG": (Image.new("CMYK", S, (0, 255, 0, 0)), {"format": "JPEG", "quality": 95}, (255, 0, 255)),
    "cmyk.tif": (Image.new("CMYK", S, (0, 0, 255, 0)), {}, (255, 255, 0)),
    "ycbcr.tif": (Image.new("YCbCr", S, (128, 128, 128)), {}, (128, 128, 128)),
    "16bit-mid.png": (_u16(32768), {}, (128, 128, 128)),                      # PIL alone clips this to 255
    "16bit-dark.png": (_u16(1000), {}, (4, 4, 4)),
    "16bit-white.png": (_u16(65535), {}, (255, 255, 255)),
    "16bit-big-endian.tif": (_u16(32768, "I").convert("I;16B"), {}, (128, 128, 128)),
    "int32.tif": (_u16(32768, "I"), {}, (128, 128, 128)),
    "16bit.pgm": (_u16(20000, "I"), {"format": "PPM"}, (78, 78, 78)),           # read by PIL as mode I
    "float-half.tif": (Image.fromarray(np.full(S[::-1], 0.5, np.float32)), {}, (128, 128, 128)),
    "float-quarter.tif": (Image.fromarray(np.full(S[::-1], 0.25, np.float32)), {}, (64, 64, 64)),
}


def _save(im: Image.Image, path: Path, **kw) -> None:
    b = io.BytesIO()
    fmt = kw.pop("format", None) or {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".webp": "WEBP", ".gif": "GIF",
                                     ".pgm": "PPM", ".jpeg": "JPEG"}[path.suffix.lower()]
    im.save(b, fmt, **kw)
    path.write_bytes(b.getvalue())


def _bmp_claiming(w: int, h: int, n: int = 2048) -> bytes:
    """A real BMP whose header claims ``w``×``h`` pixels, padded to ``n`` bytes."""
    b = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(b, "BMP")
    raw = bytearray(b.getvalue())
    struct.pack_into("<ii", raw, 18, w, h)
    return bytes(raw + bytes(n - len(raw)))


def _png_claiming(w: int, h: int) -> bytes:
    """A real PNG (valid CRC) whose IHDR claims ``w``×``h`` pixels and whose data holds 4×4."""
    b = io.BytesIO()
    Image.new("L", (4, 4), 9).save(b, "PNG")
    raw = bytearray(b.getvalue())
    struct.pack_into(">II", raw, 16, w, h)
    struct.pack_into(">I", raw, 29, zlib.crc32(raw[12:29]))
    return bytes(raw)


LYING = {"lying-20000x15000.bmp": _bmp_claiming(20000, 15000), "lying-10000x10000.bmp": _bmp_claiming(10000, 10000),
         "lying-20000x15000.png": _png_claiming(20000, 15000), "lying-9000x9000.png": _png_claiming(9000, 9000)}


@pytest.fixture(scope="session")
def odd_tree(tmp_path_factory) -> Path:
    """A small tree (kaggle val) plus: a file of every PIL mode (class 0); two images over PIL's default 179 Mpx
    bomb limit, one JPEG over fastft's own limit, headers that lie (class 1); a dangling symlink, a FIFO, files outside
    any class folder and non-images in the flat val/."""
    h = load()
    root = tmp_path_factory.mktemp("odd") / "ILSVRC2012"
    synth(root, classes=list(h.wnids[:3]), train_per_class=2, val_per_class=1, size=32, val_layout="kaggle", seed=3)
    c0, c1 = root / "train" / h.wnids[0], root / "train" / h.wnids[1]
    for name, (im, kw, _) in MODES.items():
        _save(im, c0 / name, **dict(kw))
    Image.new("L", (14000, 14000), 90).save(c1 / "big-196mpx.JPEG", "JPEG", quality=50)   # > 179 Mpx: drafted to 1/8
    Image.new("L", (15000, 14000), 60).save(c1 / "big-210mpx.JPEG", "JPEG", quality=50)   # > MAX_PIXELS: drafted to fit
    Image.new("L", (13500, 13500), 200).save(c1 / "big-182mpx.png", "PNG")               # decoded in full
    for name, data in LYING.items():
        (c1 / name).write_bytes(data)
    (c0 / "gone.JPEG").symlink_to(root / "nowhere.JPEG")
    os.mkfifo(c0 / "pipe.JPEG")
    (root / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    (root / "val" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    (root / "val" / "notes.txt").write_text("downloaded 2012\n")
    return root


@pytest.fixture(scope="session")
def odd_store(odd_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("odd-store") / "s"
    write_store(odd_tree, out, CFG, workers=2, progress=False)
    return out


def _rows(store: Path) -> dict[str, dict]:
    df = open_store(store).samples()
    return {Path(r.source).name: r for r in df.itertuples()}


def _rejected(store: Path) -> dict[str, str]:
    return {Path(r["source"]).name if "/val/" not in f"/{r['source']}" else r["source"]: r["reason"]
            for r in csv.DictReader(open(store / "rejected.csv"))}


def _pixels(store: Path, row) -> np.ndarray:
    with tarfile.open(store / f"{row.shard}.tar") as tf:
        im = Image.open(tf.extractfile(f"{row.key}.jpg"))
        im.load()
    assert im.format == "JPEG" and im.mode == "RGB" and im.size == (24, 24)
    return np.asarray(im)


def test_every_mode_is_converted_by_pixel_value(odd_store):
    """Each PIL mode the reader can meet, written through the real writer and read back from the store's tar, has the
    RGB worked out by hand (JPEG tolerance: 4 levels); a 16-bit mid-gray is 128, not PIL's clipped 255."""
    rows = _rows(odd_store)
    wrong = {}
    for name, (_, _, want) in MODES.items():
        assert name in rows, f"{name} not written: {_rejected(odd_store).get(name)}"
        got = _pixels(odd_store, rows[name])[4:20, 4:20].reshape(-1, 3).mean(0)
        if np.abs(got - want).max() > 4:
            wrong[name] = (got.round().tolist(), want)
    assert not wrong, wrong
    kinds = open_store(odd_store).manifest["input_kinds"]
    assert kinds["png-grayscale-16bit"] == 3 and kinds["tiff-grayscale-float"] == 2 and kinds["png-palette-alpha"] == 1
    assert kinds["cmyk"] == 1 and kinds["webp-rgba"] == 1 and kinds["ppm-grayscale-32bit"] == 1


def test_images_over_the_bomb_limit_are_downscaled_and_lying_headers_rejected(odd_store):
    """Real images over PIL's default 179 Mpx limit are written (JPEGs decoded at 1/8 scale, a PNG in full); beyond
    fastft's limit a JPEG is drafted to fit; a header that claims more than the limit, or more pixels than the file
    holds, is rejected with that reason."""
    rows, rej = _rows(odd_store), _rejected(odd_store)
    for name, v in (("big-196mpx.JPEG", 90), ("big-210mpx.JPEG", 60), ("big-182mpx.png", 200)):
        assert name in rows, rej.get(name)
        assert np.abs(_pixels(odd_store, rows[name]).astype(int) - v).max() <= 3
    assert rej["lying-20000x15000.bmp"] == rej["lying-20000x15000.png"] == \
        f"too large (300 Mpx; fastft decodes at most {MAX_PIXELS / 1e6:.0f} Mpx)"
    assert rej["lying-10000x10000.bmp"] == "header claims more pixels than the file holds (10000×10000 px in 2,048 bytes)"
    assert rej["lying-9000x9000.png"].startswith("header claims more pixels than the file holds (9000×9000 px")
    reasons = open_store(odd_store).manifest["rejected_reasons"]
    assert reasons["too large"] == 2 and reasons["header claims more pixels than the file holds"] == 2


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
def test_lying_headers_are_rejected_without_allocating(tmp_path):
    """In a fresh process, the lying headers are rejected while its peak memory stays far below what they claim
    (10000×10000 RGB alone would be 300 MB)."""
    for name, data in LYING.items():
        (tmp_path / name).write_bytes(data)
    # VmHWM: this process's peak resident memory (ru_maxrss would carry the parent's over fork + exec)
    code = ("import re, sys; from fastft.data.shard.convert import _process\n"
            "for p in sys.argv[1:]: assert _process((p, None, '24x24', 90))[0] is None\n"
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)")
    r = subprocess.run([sys.executable, "-c", code, *map(str, sorted(tmp_path.iterdir()))], capture_output=True, text=True,
                       check=True)
    assert int(r.stdout) < 200, f"peak {r.stdout.strip()} MB"


def test_every_file_under_the_tree_is_written_or_rejected(odd_tree, odd_store):
    """inputs = written + rejected counts every file os.walk finds under train/ and val/ — dangling symlink, FIFO,
    files outside class folders, non-images in the flat val/ — each rejected with its reason."""
    n = sum(len(files) for d in ("train", "val") for _, _, files in os.walk(odd_tree / d))
    t = open_store(odd_store).manifest["totals"]
    assert t["inputs"] == n == t["written"] + t["rejected"]
    rej = _rejected(odd_store)
    assert rej["gone.JPEG"] == f"dangling symlink (to {odd_tree / 'nowhere.JPEG'})"
    assert rej["pipe.JPEG"] == "not a regular file (a FIFO)"
    assert rej[".DS_Store"] == "not in a class folder"
    assert rej["val/.DS_Store"] == rej["val/notes.txt"] == "no label in LOC_val_solution.csv (not an ILSVRC2012_val_* file)"
    assert set(rej) == {"gone.JPEG", "pipe.JPEG", ".DS_Store", "val/.DS_Store", "val/notes.txt", *LYING}


def _kaggle_tree(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    synth(root, classes=list(load().wnids[:2]), train_per_class=1, val_per_class=2, size=24, val_layout="kaggle", seed=1)
    return root


def _labels(store: Path) -> dict:
    df = open_store(store).samples()
    return dict(zip(df[df.split == "val"].source, df[df.split == "val"].wnid))


def test_kaggle_csv_variants_are_read_and_bad_labels_named_before_work(tmp_path):
    """A BOM, ', ' separators with CRLF give the same labels; a label that is not a wnid, an image labelled twice
    differently, an empty prediction are one-line errors naming the line (and nothing is written)."""
    root = _kaggle_tree(tmp_path, "k")
    csv_path = root / "LOC_val_solution.csv"
    plain = csv_path.read_text()
    write_store(root, tmp_path / "s0", CFG, workers=1, progress=False)
    want = _labels(tmp_path / "s0")
    assert len(want) == 4
    lines = plain.splitlines()
    csv_path.write_bytes(("\ufeff" + "\r\n".join(x.replace(",", ", ") for x in lines) + "\r\n").encode())
    write_store(root, tmp_path / "s1", CFG, workers=1, progress=False)
    assert _labels(tmp_path / "s1") == want
    image, pred = lines[2].split(",")
    other = next(w for w in load().wnids[:2] if w != pred.split()[0])
    for bad, match in ((lines + [f"{image},{other} 1 2 3 4"], rf"line 6: {image} is labelled {other}, but .* on line 3"),
                       (lines[:2] + [f"{image},cat 1 2 3 4"] + lines[3:], rf"line 3: {image} is labelled 'cat', not an"),
                       (lines[:2] + [f"{image},"] + lines[3:], rf"line 3: {image} has an empty PredictionString"),
                       (["Id,Labels"] + lines[1:], "line 1: expected the header")):
        csv_path.write_text("\n".join(bad) + "\n")
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        with pytest.raises(FastFTError, match=match):
            write_store(root, out, CFG, workers=1, progress=False)
        assert not out.exists()
    csv_path.write_text(plain)


def test_devkit_ids_that_name_no_class_are_named(tmp_path):
    root = tmp_path / "d"
    synth(root, classes=list(load().wnids[:2]), train_per_class=1, val_per_class=1, size=24, val_layout="devkit", seed=1)
    gt = root / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
    gt.write_text(gt.read_text().splitlines()[0] + "\n1001\n")
    with pytest.raises(FastFTError, match=r"ground_truth.txt line 2: '1001' is not an ILSVRC2012_ID"):
        write_store(root, tmp_path / "s", CFG, workers=1, progress=False)


def test_a_folder_in_a_class_folder_is_named_before_work(tmp_path):
    root = _kaggle_tree(tmp_path, "sub")
    c = load().wnids[0]
    (root / "train" / c / c).mkdir()
    (root / "train" / c / c / f"{c}_5.JPEG").write_bytes((root / "train" / c / f"{c}_0.JPEG").read_bytes())
    with pytest.raises(FastFTError, match=rf"train/{c}/{c}/ is a folder inside a class folder"):
        write_store(root, tmp_path / "s", CFG, workers=1, progress=False)
    assert not (tmp_path / "s").exists()


def test_a_class_whose_every_input_is_rejected_is_an_error_or_listed_missing(tmp_path):
    root = _kaggle_tree(tmp_path, "dead")
    c = load().wnids[1]
    for p in (root / "train" / c).iterdir():
        p.write_bytes(b"<html>gone</html>")
    cfg = ShardConfig(resize="24x24")
    with pytest.raises(FastFTError, match=rf"1 classes have no usable training image.*first: {c}, 1 files"):
        write_store(root, tmp_path / "s", replace(cfg, classes=tuple(load().wnids[:2])), workers=1, progress=False)
    m = write_store(root, tmp_path / "s2", replace(cfg, classes=tuple(load().wnids[:2]), allow_missing=True), workers=1,
                    progress=False)
    assert m["missing_classes"] == [c] and m["totals"]["rejected"] == 1


# ---------------------------------------------------------------- fuzz
def _bases() -> dict[str, bytes]:
    """One small file of every format the reader accepts (several modes of some)."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    out = {}
    for name, im, fmt, kw in (
            ("jpeg", rgb, "JPEG", {}), ("jpeg-progressive", rgb, "JPEG", {"progressive": True}),
            ("jpeg-gray", rgb.convert("L"), "JPEG", {}), ("jpeg-cmyk", rgb.convert("CMYK"), "JPEG", {}),
            ("png", rgb, "PNG", {}), ("png-rgba", rgb.convert("RGBA"), "PNG", {}), ("png-p", rgb.convert("P"), "PNG", {}),
            ("png-16", Image.fromarray(rng.integers(0, 65535, (12, 16), dtype=np.uint16)), "PNG", {}),
            ("png-1", rgb.convert("1"), "PNG", {}), ("gif", rgb.convert("P"), "GIF", {}), ("bmp", rgb, "BMP", {}),
            ("bmp-p", rgb.convert("P"), "BMP", {}), ("tiff", rgb, "TIFF", {}), ("tiff-lzw", rgb, "TIFF", {"compression": "tiff_lzw"}),
            ("tiff-f", rgb.convert("F"), "TIFF", {}), ("tiff-16b", Image.fromarray(np.zeros((12, 16), np.uint16)).convert("I").convert("I;16B"), "TIFF", {}),
            ("webp", rgb, "WEBP", {}), ("webp-rgba", rgb.convert("RGBA"), "WEBP", {"lossless": True}),
            ("ppm", rgb, "PPM", {})):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        out[name] = b.getvalue()
    return out


def _mutate(data: bytes, r: random.Random) -> bytes:
    b = bytearray(data)
    op = r.randrange(5)
    if op == 0:  # flip a few bytes anywhere
        for _ in range(r.randint(1, 8)):
            b[r.randrange(len(b))] = r.randrange(256)
    elif op == 1:  # cut
        b = b[:r.randrange(1, len(b))]
    elif op == 2:  # header fields: sizes, offsets, counts
        i = r.randrange(min(64, len(b) - 4))
        b[i:i + 4] = r.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\x00\x01", r.randbytes(4)))
    elif op == 3:  # insert junk
        i = r.randrange(len(b))
        b[i:i] = r.randbytes(r.randint(1, 64))
    else:  # repeat a slice (duplicated chunks, markers)
        i = r.randrange(len(b))
        b[i:i] = b[i:i + r.randint(1, 200)] * r.randint(1, 4)
    return bytes(b)


def test_fuzz_every_mutated_input_is_written_or_rejected(tmp_path):
    """2,000 seeded byte mutations of every accepted format through the per-input path: each is either a decodable
    RGB JPEG or a rejection with a reason; no exception escapes."""
    r = random.Random(2024)
    bases = _bases()
    outcomes = {"written": 0, "rejected": 0}
    path = tmp_path / "x"
    for i in range(2000):
        name = list(bases)[i % len(bases)]
        data = _mutate(bases[name], r)
        path.write_bytes(data)
        jpg, info = _process((str(path), None, "24x24", 90))
        assert isinstance(info, str) and info, (name, i)
        if jpg is None:
            outcomes["rejected"] += 1
            continue
        im = Image.open(io.BytesIO(jpg))
        im.load()
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (24, 24), (name, i, info)
        outcomes["written"] += 1
    assert min(outcomes.values()) > 200, outcomes  # both outcomes exercised


def test_mutated_tree_through_the_cli_shards_and_verifies(tmp_path):
    """A small real tree holding mutated files of each format, through `fastft shard` and `fastft verify` as a user
    runs them: the run completes, the ledger balances, verify says OK."""
    root = _kaggle_tree(tmp_path, "cli")
    c = load().wnids[0]
    r = random.Random(11)
    for name, data in _bases().items():
        for k in range(3):
            (root / "train" / c / f"{name}-{k}.JPEG").write_bytes(_mutate(data, r) if k else data)
    (root / "train" / c / "lying.bmp").write_bytes(LYING["lying-20000x15000.bmp"])
    out = tmp_path / "store"
    res = fastft("shard", root, "--out", out, "--resize", "24x24", "--allow-missing", "--workers", "2", "--quiet")
    assert "Traceback" not in res.stderr
    t = open_store(out).manifest["totals"]
    assert t["inputs"] == sum(len(f) for d in ("train", "val") for _, _, f in os.walk(root / d)) == t["written"] + t["rejected"]
    assert t["rejected"] >= 1
    v = fastft("verify", out)
    assert v.returncode == 0


def test_non_images_in_the_downloaded_val_archive_are_rejected_not_fatal(tmp_path):
    """A `.DS_Store` inside ILSVRC2012_img_val.tar (flat, Kaggle labels) is rejected with the reason, as in a tree."""
    from fastft.data.sources.ilsvrc2012_archives import VAL_TAR

    root = tmp_path / "a"
    synth(root, classes=list(load().wnids[:2]), train_per_class=1, val_per_class=1, size=24, val_layout="kaggle", seed=1,
          archives=True)
    with tarfile.open(root / VAL_TAR, "a") as t:
        ti = tarfile.TarInfo(".DS_Store")
        ti.size = 8
        t.addfile(ti, io.BytesIO(b"\0\0\0\1Bud1"))
    m = write_store(root, tmp_path / "s", CFG, workers=1, progress=False)
    assert m["totals"]["inputs"] == 5 and m["totals"]["rejected"] == 1
    (row,) = csv.DictReader(open(tmp_path / "s" / "rejected.csv"))
    assert row["source"] == f"{VAL_TAR}/.DS_Store"
    assert row["reason"] == "no label in LOC_val_solution.csv (not an ILSVRC2012_val_* file)"
