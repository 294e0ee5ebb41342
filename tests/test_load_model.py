"""A trained model outside fastft: ``fastft.load_model`` and plain PyTorch (the README's own code, executed) give
fastft's evaluation — the same inputs bit for bit, the same top-1 as the run's ``final.json`` — on a real run's
validation images read as plain files from the store's tars; older model files load with their geometry derived;
unfinished, damaged and hostile runs and files are named. Real ``fastft train`` run (the session's ``source_run``)."""
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastft
from fastft import preprocess, runs
from fastft.errors import FastFTError

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### Using a trained model outside fastft"


def val_images(run: Path):
    """The run's validation images (its view's keys, in the view's order) read from the store's tar shards with
    ``tarfile`` and PIL, and their wnids."""
    import pandas as pd

    view = Path(runs.read_config(run)["config"]["view"])
    store = json.loads((view / "view.json").read_text())["store"]
    keys = pd.read_csv(view / "val.csv.gz")
    tars, images = {}, []
    try:
        for key, shard in zip(keys.key, keys.shard):
            t = tars.setdefault(shard, tarfile.open(f"{store}/{shard}.tar"))
            images.append(Image.open(io.BytesIO(t.extractfile(f"{key}.jpg").read())))
    finally:
        for t in tars.values():
            t.close()
    return view, images, list(keys.wnid)


def fastft_eval_inputs(view: Path, crop: int, pre: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What fastft's evaluation feeds the model (DALI's CPU pipeline, centre crops, padding dropped) and the labels."""
    from fastft.loading import Loader, LoaderConfig

    L = Loader(view, "val", LoaderConfig(batch_size=16, crop=crop, backend="dali", device="cpu", preprocess=pre), train=False)
    xs, ys = zip(*[(x[w > 0], y[w > 0]) for x, y, w in L.epoch(0)])
    return torch.cat(xs), torch.cat(ys)


def test_load_model_equals_fastft_evaluation(source_run):
    """The loaded model and its transform, on the view's validation images as plain files, reproduce the run's own
    evaluation: every input tensor equal to the DALI pipeline's, every prediction equal, the top-1 of final.json."""
    run = source_run[2]
    m = fastft.load_model(run)
    final = json.loads((run / "final.json").read_text())
    assert isinstance(m, fastft.LoadedModel) and m.preprocess_from == "model.pt" and not m.module.training
    assert m.preprocess["crop"] == 71 and m.preprocess["resize"] == [[80, 80]] and m.preprocess["name"] == "caffe"
    view, images, wnids = val_images(run)
    assert m.classes == json.loads((view / "view.json").read_text())["classes"] and len(m.class_names) == len(m.classes)
    x_fastft, y_fastft = fastft_eval_inputs(view, 71, "caffe")
    x = torch.stack([m.transform(im) for im in images])
    assert torch.equal(x, x_fastft), f"inputs differ by up to {(x - x_fastft).abs().max()}"
    y = torch.tensor([m.classes.index(w) for w in wnids])
    assert torch.equal(y, y_fastft)
    logits = m.logits(images, batch_size=16)
    top1 = 100.0 * (logits.argmax(1) == y).double().mean().item()
    assert abs(top1 - final["top1"]) < 1e-9, (top1, final["top1"])
    with torch.no_grad():
        assert torch.equal(logits.argmax(1), m.module(x_fastft).argmax(1))
    preds = m.predict(images[:3], topk=2)
    assert [p[0][0] for p in preds] == [m.classes[i] for i in logits[:3].argmax(1)]
    assert all(len(p) == 2 and p[0][2] >= p[1][2] and p[0][1] == m.class_names[m.classes.index(p[0][0])] for p in preds)
    again = pickle.loads(pickle.dumps(m.transform))  # DataLoader workers get a copy
    assert torch.equal(again(images[0]), x[0])
    # the model file alone, with its geometry recorded, is the same model
    f = fastft.load_model(run / "model.pt")
    assert f.preprocess == m.preprocess and torch.equal(f.logits(images[:8]), logits[:8])


def readme_blocks() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n#", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_readme_code_runs_and_agrees(source_run, tmp_path, capsys):
    """The README's first two blocks (fastft.load_model; plain torch.load + the file's own preprocessing), executed on
    a real run and a JPEG of another size and shape than the store's, give the same probabilities (the third, plain
    torchvision for a torchvision model, is run in tests/test_torchvision_models.py)."""
    blocks = readme_blocks()
    assert len(blocks) == 3, "the section shows load_model, plain PyTorch and plain torchvision"
    blocks = blocks[:2]
    rng = np.random.default_rng(0)
    img = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8)).resize((194, 122), Image.BILINEAR).save(img)
    run = source_run[2]
    spaces = []
    for code in blocks:
        assert "runs/near-<id>" in code and "image.jpg" in code
        ns = {}
        exec(compile(code.replace("runs/near-<id>", str(run)).replace("image.jpg", str(img)), "README.md", "exec"), ns)
        spaces.append(ns)
    a, b = spaces
    printed = capsys.readouterr().out
    assert "alexnet 71 [[80, 80]]" in printed and b["blob"]["classes"][int(b["probs"].argmax())] in printed
    assert torch.equal(a["x"], b["prepare"](Image.open(img))), "the plain preprocessing is the transform's"
    assert torch.allclose(a["logits"].softmax(1), b["probs"], atol=1e-6, rtol=0)
    assert a["m"].predict([Image.open(img)])[0][0][0] == b["blob"]["classes"][int(b["probs"].argmax())]


def old_blob(blob: dict, drop: str) -> dict:
    """A model file as earlier fastft versions wrote it: ``geometry`` — a preprocess entry without resize and crop
    (before 2026-12-04); ``preprocess`` — none at all, and a model_config without a name (before 2026-12)."""
    if drop == "geometry":
        return {**blob, "preprocess": preprocess.describe(blob["preprocess"]["name"])}
    mc = {k: v for k, v in blob["model_config"].items() if k != "name"}
    return {k: v for k, v in {**blob, "model_config": mc}.items() if k != "preprocess"}


def test_older_model_files_load_with_derived_preprocessing(source_run, tmp_path):
    """Files without the geometry: in their run directory it comes from the run's config and store (the same
    transform as a new file's), alone from the documented defaults; files without a preprocess entry are imagenet's."""
    run = source_run[2]
    new = fastft.load_model(run)
    blob = torch.load(run / "model.pt", weights_only=True)
    old_run = tmp_path / run.name
    shutil.copytree(run, old_run, ignore=shutil.ignore_patterns("checkpoints", "analysis"))
    sha = runs.save_file(old_blob(blob, "geometry"), old_run / "model.pt")
    final = json.loads((old_run / "final.json").read_text())
    runs.write_final(old_run, {**final, "model_sha256": sha})
    m = fastft.load_model(old_run)
    assert m.preprocess_from == "run config" and m.preprocess == new.preprocess
    _, images, _ = val_images(run)
    assert torch.equal(torch.stack([m.transform(i) for i in images[:6]]), torch.stack([new.transform(i) for i in images[:6]]))
    for drop, name in (("geometry", "caffe"), ("preprocess", "imagenet")):
        f = tmp_path / f"old-{drop}.pt"
        runs.save_file(old_blob(blob, drop), f)
        m = fastft.load_model(f)
        assert m.preprocess_from == "defaults" and m.model_name == "alexnet"
        assert (m.preprocess["name"], m.preprocess["crop"], m.preprocess["resize"]) == (name, 71, [[80, 80]])
        assert m.preprocess["mean"] == list(preprocess.mean_std(name)[0])
        assert torch.equal(m.module(m.transform(images[0])[None]), new.module(torch.stack(
            [(new.transform(images[0]) + torch.tensor(new.preprocess["mean"]).view(3, 1, 1) - torch.tensor(m.preprocess["mean"]).view(3, 1, 1))
             / torch.tensor(m.preprocess["std"]).view(3, 1, 1)])))
    # a recorded entry that is wrong is named, never guessed around
    for bad, field in (({"crop": "71"}, "crop must be"), ({"resize": [[0, 80]]}, "resize must be"),
                       ({"std": [1.0, 0.0, 1.0]}, "std must be"), ({"mean": [1.0]}, "mean must be")):
        f = tmp_path / "bad.pt"
        runs.save_file({**blob, "preprocess": {**blob["preprocess"], **bad}}, f)
        with pytest.raises(FastFTError, match=re.escape(f"{f}: preprocess {field}")):
            fastft.load_model(f)


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_unfinished_damaged_and_hostile_runs_are_named(source_run, tmp_path):
    """A run that has not finished (no final.json, a damaged one, a failed run), a model.pt replaced after the run,
    a directory that is no run, and a file that would run code: each a one-line FastFTError naming it; nothing runs."""
    run = source_run[2]
    d = tmp_path / run.name
    shutil.copytree(run, d, ignore=shutil.ignore_patterns("checkpoints", "analysis"))
    final = (d / "final.json").read_bytes()

    def refused(path, *parts):
        with pytest.raises(FastFTError) as e:
            fastft.load_model(path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and all(p in msg for p in parts), msg

    (d / "final.json").unlink()
    refused(d, "has not finished: it has no final.json", "config.yaml")
    (d / "final.json").write_bytes(final[: len(final) // 2])
    refused(d, "has not finished: its final.json is damaged")
    (d / "final.json").unlink()
    (d / "failed.json").write_text(json.dumps({"reason": "the training loss became NaN"}))
    refused(d, "it failed (the training loss became NaN)")
    (d / "failed.json").unlink()
    (d / "final.json").write_bytes(final)
    fastft.load_model(d)
    torch.save({**torch.load(d / "model.pt", weights_only=True), "run_id": "other"}, d / "model.pt")
    refused(d, "does not match the sha256")
    refused(d / "model.pt", "does not match the sha256")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "is not a run directory")
    refused(tmp_path / "nothing.pt", "does not exist")
    sentinel = tmp_path / "ran"
    torch.save({"model": Evil(sentinel), "model_config": {}}, tmp_path / "evil.pt")
    refused(tmp_path / "evil.pt", "refers to posix.system")
    assert not sentinel.exists()


def test_transform_matches_the_fallback_on_stores_without_a_fixed_size(tmp_path):
    """On ``short:N`` and ``none`` stores evaluation resizes the shorter side before its centre crop: the transform
    gives the PyTorch fallback's pixels for the store's JPEG (what fastft shard wrote from the original)."""
    from fastft.data.shard.convert import _process
    from fastft.inference import CentreCrop, Resize
    from fastft.loading.fallback import _DecodeDataset

    class Src:  # the fallback's view of a store: one sample's JPEG bytes
        aug, labels = None, [0]

        def __init__(self, jpeg):
            self.b = np.frombuffer(jpeg, np.uint8)

        def jpeg(self, i):
            return self.b

        def __len__(self):
            return 1

    rng = np.random.default_rng(1)
    orig = tmp_path / "orig.png"
    Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).resize((211, 137), Image.BILINEAR).save(orig)
    for resize, crop in (("short:100", 71), ("none", 71), ("short:90", 80), ("96x120", 71)):
        jpeg, kind = _process((str(orig), None, resize, 90))
        assert jpeg, kind
        steps = preprocess.resize_steps(resize, crop)
        fixed = resize[0].isdigit()
        x, _ = _DecodeDataset(Src(jpeg), crop, fixed)[(0, 0.5, 0.5, 0)]
        ref = x.permute(2, 0, 1).float()
        got = torch.from_numpy(np.array(CentreCrop(crop)(Resize(steps)(Image.open(io.BytesIO(jpeg)).convert("RGB"))))).permute(2, 0, 1).float()
        assert torch.equal(got, ref), (resize, crop)
        # from the original image, the steps reproduce the store's size first
        first = Resize(steps[:0 if resize == "none" else 1])(Image.open(orig).convert("RGB"))
        assert first.size == Image.open(io.BytesIO(jpeg)).size, (resize, first.size)


def test_import_fastft_stays_light():
    """``import fastft`` imports no torch; ``fastft.load_model`` is found on first use."""
    code = ("import sys, fastft; assert 'torch' not in sys.modules; f = fastft.load_model; "
            "import fastft.inference as i; assert f is i.load_model and 'load_model' in dir(fastft); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(README.parent)})
    assert r.stdout.strip() == "ok", r.stderr


def test_a_wrong_or_absent_device_is_named_before_anything_is_read(source_run):
    """load_model's device is checked first: a name torch does not take, or CUDA where torch sees none (as here, on
    the CPU machines the suite runs on), is one FastFTError, not torch's own message after the file is read."""
    run = source_run[2]
    bad = ["gpu", "mps", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"])
    for d in bad:
        with pytest.raises(FastFTError, match=r"device"):
            fastft.load_model(run, device=d)
    assert fastft.load_model(run, device="auto").device in ("cpu", "cuda")
