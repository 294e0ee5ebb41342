"""A synthetic ImageNet in the real ILSVRC2012 layout, for the demo and the tests.

Writes ``train/<wnid>/<wnid>_<i>.JPEG`` and a ``val/`` in one of the three layouts users have:

* ``folders``: ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``;
* ``devkit``: flat ``val/ILSVRC2012_val_<8 digits>.JPEG`` + ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt``
  (line i = ILSVRC2012_ID of image i) + ``ILSVRC2012_devkit_t12/data/meta.mat`` giving each ID's wnid. As in the real
  devkit, IDs do *not* follow sorted wnid order (here: a seeded permutation), so a reader that assumes they do fails;
* ``kaggle``: flat ``val/`` + ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the wnid is every 5th token).

``archives=True`` writes the same tree as the files image-net.org serves instead: ``ILSVRC2012_img_train.tar`` (one
uncompressed ``<wnid>.tar`` per class), ``ILSVRC2012_img_val.tar`` (the ``val/`` files) and, for the devkit layout,
``ILSVRC2012_devkit_t12.tar.gz``.

Image content carries the hierarchy, so a small CNN learns it and near sources transfer better than far ones:
classes on the living-thing side are a coloured blob on a textured background, whose hue comes from the class's
parent synset and whose shape comes from the class; artifact-side classes are oriented gratings whose orientation
comes from the parent and whose frequency comes from the class. A source of sibling classes teaches exactly the cue a
target needs; a source from the other side teaches a different one.

``broken=True`` adds the inputs the shard tool must survive (see ``BROKEN``), in the first class's train folder.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FastFTError
from .taxonomy import DOG, INSTRUMENTALITY, load

VAL_LAYOUTS = ("folders", "devkit", "kaggle")
# file name suffix -> what it is; every one is either converted (first four) or rejected (the rest) by `fastft shard`
BROKEN = {
    "cmyk": "CMYK JPEG", "png": "PNG saved as .JPEG", "gray": "grayscale JPEG", "rgba": "RGBA PNG saved as .JPEG",
    "truncated": "JPEG cut in half", "empty": "0-byte file", "html": "HTML page saved as .JPEG",
    "gzip": "gzip data saved as .JPEG", "random": "random bytes",
}


def demo_classes(n_per_branch: int = 8) -> list[str]:
    """A default class list for small synthetic trees: ``n`` dog classes, ``n`` instrumentality classes and ``n``
    classes from the rest of the living-thing side, spread over the branch (every k-th class in label order)."""
    h = load()
    living, _ = h.living_artifact()
    dogs, instr = h.under(DOG), h.under(INSTRUMENTALITY)
    other = [c for c in living if c not in set(dogs)]
    pick = lambda xs: xs[:: max(1, len(xs) // n_per_branch)][:n_per_branch]  # noqa: E731
    return sorted(set(pick(dogs) + pick(instr) + pick(other)), key=h.label.__getitem__)


def _u(*keys) -> float:
    """A deterministic number in [0, 1) from strings."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, keys)).encode()).digest()[:8], "big") / 2**64


def render(wnid: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One image of class ``wnid`` (content rules in the module docstring)."""
    h = load()
    path = h.primary[wnid]
    parent = path[-2]
    w, hgt = size
    yy, xx = np.mgrid[0:hgt, 0:w].astype(np.float32)
    img = np.empty((hgt, w, 3), np.float32)
    base = np.array([_u(path[min(4, len(path) - 1)], c) for c in "rgb"]) * 120 + 60  # coarse branch: background tone
    img[:] = base
    img += rng.normal(0, 18, img.shape)
    if wnid in h._partition[0]:
        hue = np.array([_u(parent, c) for c in "rgb"]) * 200 + 40
        hue = np.clip(hue + (np.array([_u(wnid, "d", c) for c in "rgb"]) - 0.5) * 60, 0, 255)
        shape = int(_u(wnid, "shape") * 4)
        r = min(w, hgt) * rng.uniform(0.18, 0.3)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, hgt - r)
        dx, dy = (xx - cx) / r, (yy - cy) / r
        mask = [dx**2 + dy**2 < 1, (abs(dx) < 0.8) & (abs(dy) < 0.8), (abs(dx) + abs(dy)) < 1,
                ((abs(dx) < 0.3) | (abs(dy) < 0.3)) & (abs(dx) < 1) & (abs(dy) < 1)][shape]
        img[mask] = hue + rng.normal(0, 10, (int(mask.sum()), 3))
    else:
        theta = _u(parent, "theta") * np.pi + rng.normal(0, 0.08)
        freq = (0.08 + 0.25 * _u(wnid, "freq")) * 2 * np.pi * (96 / min(w, hgt))
        phase = rng.uniform(0, 2 * np.pi)
        g = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * freq + phase)
        tint = np.array([_u(wnid, "t", c) for c in "rgb"]) * 80
        img += g[..., None] * (50 + tint)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _dims(size: int, rng: np.random.Generator) -> tuple[int, int]:
    """ImageNet-like variety of sizes and aspect ratios, so resizing is exercised."""
    s = size * rng.uniform(0.8, 1.3)
    a = (1.0, 4 / 3, 3 / 4, 3 / 2)[rng.integers(4)]
    return max(16, int(s * a ** 0.5)), max(16, int(s / a ** 0.5))


def _write_chunk(jobs: list, size: int, quality: int) -> None:
    for path, wnid, key in jobs:
        rng = np.random.default_rng(list(key))
        Path(path).write_bytes(_jpeg(render(wnid, rng, _dims(size, rng)), quality))


def _write_images(jobs: list, size: int, quality: int, workers: int | None) -> None:
    import os

    if workers is None:
        workers = (os.cpu_count() or 1) if len(jobs) >= 2000 else 1
    if workers <= 1:
        return _write_chunk(jobs, size, quality)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    chunks = [jobs[i::workers * 4] for i in range(workers * 4)]
    from ..util.children import die_with_parent

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent,  # spawn: safe
                             initargs=(os.getpid(),)) as ex:  # beside DALI threads
        list(ex.map(_write_chunk, chunks, [size] * len(chunks), [quality] * len(chunks)))


def _jpeg(im: Image.Image, quality: int) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", quality=quality)
    return b.getvalue()


def _broken_files(rng: np.random.Generator, wnid: str, good: Image.Image, quality: int) -> dict[str, bytes]:
    png = io.BytesIO(); good.save(png, "PNG")
    rgba = io.BytesIO(); good.convert("RGBA").save(rgba, "PNG")
    full = _jpeg(good, quality)
    return {
        "cmyk": _jpeg(good.convert("CMYK"), quality), "png": png.getvalue(), "gray": _jpeg(good.convert("L"), quality),
        "rgba": rgba.getvalue(), "truncated": full[: len(full) // 2], "empty": b"",
        "html": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
        "gzip": gzip.compress(b"not an image" * 20, mtime=0), "random": rng.bytes(2048),
    }


def synth(out: str | Path, classes: list[str] | None = None, train_per_class: int = 40, val_per_class: int = 10,
          size: int = 96, quality: int = 90, val_layout: str = "folders", broken: bool = False, seed: int = 0,
          workers: int | None = None, archives: bool = False) -> dict:
    """Write a synthetic ILSVRC2012 tree under ``out``; returns a summary (counts, layout, broken files written).

    Every image has its own seeded generator, so the tree is the same for any number of ``workers`` (processes;
    default: all cores for trees of 2,000 images or more, else 1)."""
    h = load()
    classes = list(classes) if classes else demo_classes()
    bad = [c for c in classes if c not in h.label]
    if bad:
        raise FastFTError(f"not ILSVRC2012 classes: {bad[:5]} (use wnids from `fastft taxonomy`)")
    if val_layout not in VAL_LAYOUTS:
        raise FastFTError(f"unknown val layout {val_layout!r}; choose one of {', '.join(VAL_LAYOUTS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FastFTError(f"{out} exists and is not empty; choose a new directory")
    pyrng = random.Random(seed)
    for c in classes:
        (out / "train" / c).mkdir(parents=True)
    jobs = [(out / "train" / c / f"{c}_{i}.JPEG", c, (seed, h.label[c], i)) for c in classes for i in range(train_per_class)]
    broken_written = []
    if broken:
        c = classes[0]
        rng = np.random.default_rng([seed, 0xBAD])
        good = render(c, rng, _dims(size, rng))
        for kind, data in _broken_files(rng, c, good, quality).items():
            p = out / "train" / c / f"{c}_{kind}.JPEG"
            p.write_bytes(data)
            broken_written.append(str(p.relative_to(out)))
        # awkward names: a dot inside the stem and a lower-case .jpg; both must shard as distinct, readable keys
        jobs += [(out / "train" / c / name, c, (seed, 0xBAD, k)) for k, name in enumerate((f"{c}_9001.v2.JPEG", f"{c}_9002.jpg"))]

    # val: images in a seeded interleaved order, named ILSVRC2012_val_00000001 ... as in the real set
    val_labels = [c for c in classes for _ in range(val_per_class)]
    pyrng.shuffle(val_labels)
    vdir = out / "val"
    vdir.mkdir(parents=True)
    for i, c in enumerate(val_labels, 1):
        d = vdir / c if val_layout == "folders" else vdir
        d.mkdir(exist_ok=True)
        jobs.append((d / f"ILSVRC2012_val_{i:08d}.JPEG", c, (seed, 0x7A1, i)))
    _write_images(jobs, size, quality, workers)
    if val_layout == "devkit":
        order = list(h.wnids)
        random.Random(f"devkit/{seed}").shuffle(order)  # devkit IDs are not sorted-wnid order
        id_of = {w: i for i, w in enumerate(order, 1)}
        data = out / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{id_of[c]}\n" for c in val_labels))
        write_meta_mat(data / "meta.mat", order)
    elif val_layout == "kaggle":
        lines = ["ImageId,PredictionString"]
        for i, c in enumerate(val_labels, 1):
            lines.append(f"ILSVRC2012_val_{i:08d},{c} 10 12 80 90 {c} 5 5 40 40")
        (out / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    if archives:
        _pack_archives(out)
    return {"root": str(out), "classes": len(classes), "train": len(classes) * train_per_class + len(broken_written) + (2 if broken else 0),
            "val": len(val_labels), "val_layout": val_layout, "broken": broken_written}


def _pack_archives(out: Path) -> None:
    """Replace the written tree by the archives of the real download (deterministic tar and gzip metadata)."""
    import shutil
    import tarfile

    from .sources.ilsvrc2012_archives import TRAIN_TAR, VAL_TAR
    from .sources.labels import DEVKIT_DIR, DEVKIT_TGZ

    def add(t: tarfile.TarFile, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
        t.addfile(ti, io.BytesIO(data))

    def files(d: Path) -> list[Path]:
        return sorted(p for p in d.rglob("*") if p.is_file())

    with tarfile.open(out / TRAIN_TAR, "w") as outer:
        for d in sorted((out / "train").iterdir()):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for p in files(d):
                    add(inner, p.name, p.read_bytes())
            add(outer, f"{d.name}.tar", buf.getvalue())
    with tarfile.open(out / VAL_TAR, "w") as t:
        for p in files(out / "val"):
            add(t, str(p.relative_to(out / "val")), p.read_bytes())
    if (out / DEVKIT_DIR).is_dir():
        with gzip.GzipFile(out / DEVKIT_TGZ, "wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as t:
            for p in files(out / DEVKIT_DIR):
                add(t, str(p.relative_to(out)), p.read_bytes())
        shutil.rmtree(out / DEVKIT_DIR)
    shutil.rmtree(out / "train")
    shutil.rmtree(out / "val")


def write_meta_mat(path: Path, order: list[str]) -> None:
    """A devkit-style ``meta.mat``: struct array ``synsets`` with ILSVRC2012_ID, WNID, words, num_children (leaves = 0)."""
    from scipy.io import savemat

    h = load()
    rec = np.zeros(len(order), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    for i, w in enumerate(order):
        rec[i] = (np.array([[i + 1]], dtype=np.uint16), np.array([w]), np.array([", ".join(h.names[w])]), np.array([[0]], dtype=np.uint8))
    savemat(str(path), {"synsets": rec.reshape(-1, 1)})


# folder names of the synthetic image-folder dataset: spaces, Unicode, punctuation, a leading dot-free "NA"
FOLDER_NAMES = ("golden retriever", "Shih-Tzu (toy)", "café au lait", "NA", "猫 & 犬", "bird, small", "Ørsted's \"rose\"", "007")


def synth_folder(out: str | Path, classes: dict[str, str], train_per_class: int = 20, val_per_class: int = 5,
                 size: int = 72, quality: int = 90, broken: bool = False, seed: int = 0, workers: int | None = None) -> dict:
    """A synthetic dataset in torchvision's ``ImageFolder`` layout: ``train/<name>/<name> <i>.jpg`` and
    ``val/<name>/…`` (``val_per_class=0``: no ``val/``), where ``classes`` maps each folder name (any text) to the
    ILSVRC2012 class whose images it holds (so that a model trained on the synthetic ImageNet transfers to it).
    ``broken=True`` adds the files of :data:`BROKEN` to the first class's train folder and a stray file in ``train/``."""
    h = load()
    bad = [w for w in classes.values() if w not in h.label]
    if bad:
        raise FastFTError(f"synth_folder: not ILSVRC2012 classes: {bad[:5]}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FastFTError(f"{out} exists and is not empty; choose a new directory")
    jobs, broken_written = [], []
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for name, wnid in classes.items():
            if n:
                (out / split / name).mkdir(parents=True)
            jobs += [(out / split / name / f"{name} {i}.jpg", wnid, (seed, h.label[wnid], 0xF01D, i + (split == "val") * 10**6))
                     for i in range(n)]
    if broken:
        name, wnid = next(iter(classes.items()))
        rng = np.random.default_rng([seed, 0xBAD, 0xF01D])
        for kind, data in _broken_files(rng, wnid, render(wnid, rng, _dims(size, rng)), quality).items():
            p = out / "train" / name / f"{name}_{kind}.jpg"
            p.write_bytes(data)
            broken_written.append(str(p.relative_to(out)))
        (out / "train" / "README.txt").write_text("a file outside every class folder\n")
        broken_written.append("train/README.txt")
    _write_images(jobs, size, quality, workers)
    return {"root": str(out), "classes": len(classes), "train": len(classes) * train_per_class + len(broken_written),
            "val": len(classes) * val_per_class, "broken": broken_written}
