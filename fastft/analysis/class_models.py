"""Fig. 11's class-model images (Simonyan et al. 2014): gradient ascent on the class scores (pre-softmax) from the
mean image, step 1.0 and L2 penalty 1e-3 in units of the pixels' spread (ImageNet's per-channel std) whatever the
model's preprocessing (:mod:`fastft.preprocess`), 200 steps; the images side by side in one PNG, the scores before
and after in ``<run>/analysis/classviz.json`` (not a report column: it has no view)."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import preprocess
from ..errors import FastFTError
from ..util.device import resolve
from .extract import input_size, load_model, model_preprocess
from .registry import save


def class_images(run, classes: list[int], steps: int = 200, lr: float = 1.0, l2: float = 1e-3, device: str = "auto",
                 out: str | Path | None = None) -> dict:
    """Simonyan et al.'s class-model images: gradient ascent on the class scores from a zero (mean) image. The image
    is optimised in units of the pixels' typical spread (ImageNet's per-channel std), whatever the model's
    preprocessing, so ``lr`` and ``l2`` mean the same for a Caffe-scale and a normalised model."""
    dev = resolve(device)
    model, blob = load_model(run, dev)
    bad = [c for c in classes if not 0 <= c < model.cfg.num_classes]
    if bad:
        raise FastFTError(f"classes {bad} are not classes of {blob.path} (it has {model.cfg.num_classes}: 0 … {model.cfg.num_classes - 1})")
    s = input_size(model, blob)
    mean, std = (torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in preprocess.mean_std(model_preprocess(blob)))
    unit = torch.tensor(preprocess.mean_std("imagenet")[1], device=dev).view(1, 3, 1, 1)  # one unit of z, in pixels
    z = torch.zeros(len(classes), 3, s, s, device=dev, requires_grad=True)
    scores = lambda z: model(z * unit / std).gather(1, idx.view(-1, 1)).squeeze(1)  # noqa: E731 - the model's input
    idx = torch.as_tensor(classes, device=dev)
    with torch.no_grad():
        start = scores(z)
    begin = ["mean image"] * len(classes)
    stuck = ~torch.autograd.grad(scores(z).sum(), z)[0].flatten(1).any(1) if steps else torch.zeros(len(classes), dtype=torch.bool)
    if stuck.any():
        # e.g. an untrained ResNet: no conv bias, batch norm's zero shift and mean, so every unit sits at ReLU's kink
        # and a class's gradient at the mean image is exactly 0: its ascent would never move. Those start a hair off.
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            z[stuck.to(dev)] += 1e-2 * torch.randn(z[stuck.to(dev)].shape, generator=gen).to(dev)
            start = scores(z)
        begin = ["mean image + N(0, 0.01²) (the gradient at the mean image is exactly 0)" if s else b
                 for s, b in zip(stuck.tolist(), begin)]
    for _ in range(steps):
        (g,) = torch.autograd.grad(scores(z).sum() - l2 * (z ** 2).sum(), z)
        with torch.no_grad():
            z += lr * g
    with torch.no_grad():
        end = scores(z)
    res = {"analysis": "classviz", "classes": [blob.classes[c] for c in classes] if blob.classes else list(classes), "score_before": start.tolist(), "score_after": end.tolist(), "start": begin}
    if out:
        from PIL import Image

        imgs = (z.detach() * unit + mean).cpu()  # pixels
        lo, hi = imgs.amin(dim=(1, 2, 3), keepdim=True), imgs.amax(dim=(1, 2, 3), keepdim=True)
        imgs = ((imgs - lo) / (hi - lo + 1e-6) * 255).byte().permute(0, 2, 3, 1).numpy()
        grid = Image.new("RGB", (s * len(classes), s))
        for i, im in enumerate(imgs):
            grid.paste(Image.fromarray(im), (i * s, 0))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
        res["image"] = str(out)
    save(run, "classviz", res)
    return res


def cli(a) -> None:
    """``fastft analyze classviz RUN --classes 0,1,…``: the first run's images, in ``--out`` or its analysis folder."""
    r = class_images(a.runs[0], [int(c) for c in a.classes.split(",")], device=a.device,
                     out=a.out or str(Path(a.runs[0]) / "analysis" / "classviz.png"))
    print(f"class-model images: {r['image']} (class scores {['%.2f' % x for x in r['score_before']]} -> "
          f"{['%.2f' % x for x in r['score_after']]})")
