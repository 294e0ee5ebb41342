"""What a host-decoded sample costs the CPU: DALI's CPU decoder (libjpeg-turbo) on a view's JPEGs, alone and followed
by the host-side uint8 crop + mirror that ``cpu_decode`` used to do before copying to the GPU. Prints one JSON object.

``cpu_decode`` (fastft.loading.dali._dali_decode) now copies the whole decoded image to the GPU and crops there; this
measures the CPU that saves, per thread and with every usable core, on the same images in the same run. On a 2-core
x86_64 VM (2026-11-26; ``fastft synth --size 300`` sharded to 256x256 q90, ~23 kB per JPEG), three runs: 1 thread
2,520-2,690 img/s decoding vs 1,670-1,770 with the host crop; 2 threads 4,210-4,710 vs 2,700-2,820, i.e. the crop
cost 47-68 % more CPU per image (``benchmarks/results/host-decode-cpu2-2026-11-26.json``).

Usage: python benchmarks/host_decode.py VIEW [--seconds 3] [--batch 64] [--out F]
"""
import argparse
import time

import numpy as np

from fastft.bench import hardware, write
from fastft.data.views import open_view
from fastft.loading import SampleSource
from fastft.util.env import usable_cores


def _rate(jpegs: list, threads: int, crop: bool, seconds: float) -> float:
    from nvidia.dali import fn, pipeline_def, types

    rng = np.random.default_rng(0)
    b = len(jpegs)

    @pipeline_def(batch_size=b, num_threads=threads, device_id=None, exec_dynamic=True)
    def pipe():
        j = fn.external_source(source=lambda: jpegs, batch=True, dtype=types.UINT8)
        img = fn.decoders.image(j, device="cpu", output_type=types.RGB)
        if crop:  # what the host share did before: crop + mirror to uint8 HWC on the host
            cx = fn.external_source(source=lambda: list(rng.random((b, 1), np.float32)), batch=True)
            m = fn.external_source(source=lambda: list(rng.integers(0, 2, (b, 1), np.int32)), batch=True)
            img = fn.crop_mirror_normalize(img, crop=(227, 227), crop_pos_x=cx, crop_pos_y=cx, mirror=m,
                                           dtype=types.UINT8, output_layout="HWC")
        return img

    p = pipe()
    p.build()
    for _ in range(3):
        p.run()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        p.run()
        n += b
    return round(n / (time.perf_counter() - t0), 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("view")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out")
    a = ap.parse_args()
    src = SampleSource(open_view(a.view), "train")
    idx = np.random.default_rng(0).choice(len(src), size=min(a.batch, len(src)), replace=False)
    jpegs = [np.array(j) for j in src.jpegs(idx)]
    res = {"bench": "host_decode", "view": a.view, "batch": len(jpegs), "mean_jpeg_bytes": round(float(np.mean([len(j) for j in jpegs])))}
    for threads in sorted({1, usable_cores()}):
        dec, crop = _rate(jpegs, threads, False, a.seconds), _rate(jpegs, threads, True, a.seconds)
        res[f"threads{threads}"] = {"decode_img_s": dec, "decode_crop_img_s": crop, "crop_extra_cpu": round(dec / crop - 1, 2)}
        print(threads, res[f"threads{threads}"], flush=True)
    write({**res, **hardware()}, a.out)


if __name__ == "__main__":
    main()
