"""Why decoding every epoch and training barely overlap on a GPU: one process, one view, the same compiled/graphed
step, several ways of feeding it. Prints one JSON object (img/s per variant, with the step alone and the loader alone
measured in the same run).

On one H200 (2026-11-26, float16 NHWC batches, compiled + graph + fused + pad8 step) the step alone ran 31.5k
img/s, the loader alone 32.6k, and the step fed by the loader 16.7k: serial (1/(1/31.5k + 1/32.6k) = 16.0k), not
overlapped. The variants, all within +10 % of that:

* ``thread``: the loader runs in a producer thread (queue of 3 batches), so the training loop never waits in
  ``pipe.run()`` (+3 %);
* ``static-exec``: DALI's classic executor instead of the dynamic one (+10 %);
* ``reader``: DALI's own C++ ``fn.readers.webdataset`` on the view's shards (no Python ``external_source`` feed;
  order and crops drawn by DALI — for speed only) (+0 %).

So the Python feed is not the bottleneck: GPU decoding and the training step compete for the GPU. fastft's answer is
the cache (decode once; device and pinned host tiers), see ``fastft.loading.cache``.

Usage: python benchmarks/e2e_probe.py VIEW [--step graph|compile+graph] [--seconds 4] [--variants ...]
"""
import argparse
import queue
import threading

import torch

from fastft.bench import _forever, _make_step, _rate, _stepped, hardware, synthetic_batch, write
from fastft.data.views import open_view
from fastft.loading import Loader, LoaderConfig, batch_format, dali
from fastft.preprocess import DEFAULT, mean_std

MEAN_STD = mean_std(DEFAULT)  # the preprocessing fastft trains with


def _threaded(gen, depth=3):
    q = queue.Queue(depth)

    def produce():
        for item in gen:
            q.put(item)
    threading.Thread(target=produce, daemon=True).start()
    while True:
        yield q.get()


def _reader_batches(view, batch, hw, dev, crop):
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import feed_ndarray

    v = open_view(view)
    shards = v.split("train")["shards"]
    tars = [str(v.store / f"{s}.tar") for s in shards]
    idx = [str(v.path / "train" / f"{s}.idx") for s in shards]  # the view's filtered indexes: only its samples
    cuda = dev == "cuda"

    @pipeline_def(batch_size=batch, num_threads=8, device_id=0 if cuda else None, prefetch_queue_depth=3)
    def p():
        jpg, cls = fn.readers.webdataset(paths=tars, index_paths=idx, ext=["jpg", "cls"], dtypes=[types.UINT8, types.UINT8],  # .cls raw: unused here
                                         random_shuffle=True, initial_fill=1024, name="r")
        img = (fn.decoders.image(jpg, device="mixed", output_type=types.RGB, hw_decoder_load=hw) if cuda
               else fn.decoders.image(jpg, device="cpu", output_type=types.RGB))
        img = fn.crop_mirror_normalize(img, crop=(crop, crop), crop_pos_x=fn.random.uniform(range=(0, 1)),
                                       crop_pos_y=fn.random.uniform(range=(0, 1)), mirror=fn.random.coin_flip(),
                                       mean=list(MEAN_STD[0]), std=list(MEAN_STD[1]), output_layout="HWC" if cuda else "CHW",
                                       dtype=types.FLOAT16 if cuda else types.FLOAT)  # as the Loader emits for training
        return img, cls
    pipe = p()
    pipe.build()
    while True:
        img, cls = pipe.run()
        img = img.as_tensor()
        x = torch.empty(img.shape(), dtype=torch.float16 if cuda else torch.float32, device=dev)
        feed_ndarray(img, x, cuda_stream=torch.cuda.current_stream() if cuda else None)
        yield (x.permute(0, 3, 1, 2) if cuda else x), torch.zeros(batch, dtype=torch.int64, device=dev)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("view")
    ap.add_argument("--step", default="graph")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--hw-load", type=float, default=1.0)
    ap.add_argument("--variants", default="loader,plain,thread,static-exec,reader")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of the script (with --batch, --width, --crop)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--crop", type=int, default=227)
    ap.add_argument("--out")
    a = ap.parse_args()
    dev, B = a.device, a.batch
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    nc = open_view(a.view).num_classes
    prec = "bf16" if dev == "cuda" else "fp32"
    step = _make_step(a.step, nc, dev, prec, a.width, a.crop)
    x = synthetic_batch(B, a.crop, dev, prec)
    y = torch.randint(0, nc, (B,), device=dev)
    res = {"bench": "e2e_probe", "view": a.view, "step": a.step, "hw_decoder_load": a.hw_load, "img_s": {}}
    res["img_s"]["step_alone"] = round(_rate(_stepped(step, iter(lambda: (x, y), None)), a.seconds, 8, sync)[0], 1)

    def loader():
        return Loader(a.view, "train", LoaderConfig(batch_size=B, crop=a.crop, device=dev, hw_decoder_load=a.hw_load,
                                                    **batch_format(dev, prec)), seed=0)

    def xy(L):
        return ((b[0], b[1]) for b in _forever(L))
    runs = {
        "loader": lambda: _rate(xy(loader()), a.seconds, 3, sync)[0],
        "plain": lambda: _rate(_stepped(step, xy(loader())), a.seconds, 5, sync)[0],
        "thread": lambda: _rate(_stepped(step, _threaded(xy(loader()))), a.seconds, 5, sync)[0],
        "reader": lambda: _rate(_stepped(step, _reader_batches(a.view, B, a.hw_load, dev, a.crop)), a.seconds, 5, sync)[0],
    }

    def static():
        dali.EXEC_DYNAMIC = False
        try:
            return _rate(_stepped(step, xy(loader())), a.seconds, 5, sync)[0]
        finally:
            dali.EXEC_DYNAMIC = True
    runs["static-exec"] = static
    for name in a.variants.split(","):
        try:
            res["img_s"][name] = round(runs[name](), 1)
        except Exception as e:  # noqa: BLE001
            res["img_s"][name] = f"error: {type(e).__name__}: {str(e)[:200]}"
        print(name, res["img_s"][name], flush=True)
    write({**res, **hardware()}, a.out)


if __name__ == "__main__":
    main()
