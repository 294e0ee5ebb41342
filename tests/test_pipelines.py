"""Input pipelines on DALI's CPU backend and the PyTorch fallback: augmentation, labels, exact epochs, resume."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastft.errors import FastFTError
from fastft.loading import EpochPlan, Loader, LoaderConfig
from fastft.loading.augment import _torch_augment
from fastft.loading.cache import DECODE
from fastft.train.loop import _cache_fractions

CFG = LoaderConfig(batch_size=8, crop=71, num_threads=1)


@pytest.mark.parametrize("n,world,batch", [(37, 2, 4), (50, 3, 4), (5, 2, 4), (64, 2, 8)])
def test_epoch_plan_covers_each_sample_once(n, world, batch):
    plans = [EpochPlan(n, batch, world, r, seed=1) for r in range(world)]
    for epoch in (0, 1):
        per_rank = [p.epoch(epoch)["index"] for p in plans]
        assert len({a.shape for a in per_rank}) == 1 and per_rank[0].shape == (plans[0].steps, batch)
        stream = np.stack(per_rank, 1).reshape(-1)  # global order: step-major, then rank
        assert sorted(stream[:n]) == list(range(n)), "every sample once, first"
        pad = stream[n:]
        assert len(pad) == plans[0].padding < world * batch
        nxt = np.concatenate([plans[0]._order(epoch + k) for k in (1, 2, 3)])
        assert list(pad) == list(nxt[: len(pad)]), "padding comes from the next epochs' order"
    a, b = plans[0].epoch(0)["index"], plans[0].epoch(1)["index"]
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, EpochPlan(n, batch, world, 0, seed=2).epoch(0)["index"])


def test_eval_plan_weights_count_each_sample_once():
    plans = [EpochPlan(37, 4, 3, r, shuffle=False) for r in range(3)]
    eps = [p.epoch(0) for p in plans]
    counts = np.zeros(37)
    for e in eps:
        np.add.at(counts, e["index"].reshape(-1), e["weight"].reshape(-1))
        assert (e["crop_x"] == 0.5).all() and (e["mirror"] == 0).all()
    assert (counts == 1).all()


def test_dali_batches_crop_labels_and_mirror(view_near):
    L = Loader(view_near.path, "train", CFG, seed=0)
    idx = L.epoch_indices(0)
    plan = L.plan.epoch(0)
    assert 0.4 < plan["mirror"].mean() < 0.6
    for step, (x, y, w) in enumerate(L.epoch(0)):
        assert x.shape == (8, 3, 71, 71) and x.dtype == torch.float32
        assert torch.equal(y, torch.from_numpy(L.src.labels[idx[step]]))
        assert (w == 1).all()
    assert step + 1 == len(L) == -(-len(L.src) // 8)
    keys = L.view.keys("train")
    assert set(L.src.labels) == set(range(8)) and sorted(set(keys["view_label"])) == list(range(8))


def test_fallback_yields_same_samples_and_pixels(view_near):
    a = list(Loader(view_near.path, "train", CFG, seed=3).epoch(2))
    b = list(Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, backend="pytorch", num_threads=1), seed=3).epoch(2))
    assert len(a) == len(b)
    for (xa, ya, _), (xb, yb, _) in zip(a, b):
        assert torch.equal(ya, yb)
        assert torch.allclose(xa, xb, atol=1e-4)


def test_exif_orientation_is_ignored_by_both_backends(tmp_path):
    """A ``--resize none`` store keeps original JPEG bytes, EXIF orientation tags included: DALI (which would rotate
    by the tag) and the PIL fallback (which does not) must still see the same pixels."""
    from PIL import Image

    from fastft.data.shard import ShardConfig, write_store
    from fastft.data.views import resolve
    from fastft.data.subsets import ClassSet, SubsetSpec
    from fastft.data.synth import synth
    from fastft.data.taxonomy import load

    classes = list(load().wnids[:2])
    root = tmp_path / "tree"
    synth(root, classes=classes, train_per_class=3, val_per_class=1, size=64, seed=1)
    half = np.zeros((60, 120, 3), np.uint8)
    half[:, 60:] = 255  # left black, right white; a 90° rotation would make it top/bottom
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(half).save(root / "train" / classes[0] / f"{classes[0]}_exif.JPEG", quality=95, exif=exif.tobytes())
    write_store(root, tmp_path / "store", ShardConfig(resize="none", allow_missing=True), workers=1, progress=False)
    spec = SubsetSpec("x", 0, {}, {"t": ClassSet(tuple(classes))}, {})
    view = resolve(spec, "t", tmp_path / "store", tmp_path / "view")
    key = [i for i, k in enumerate(Loader(view.path, "train", CFG, train=False).src.keys) if k.endswith("exif")]
    assert len(key) == 1
    for backend in ("dali", "pytorch"):
        L = Loader(view.path, "train", LoaderConfig(batch_size=1, crop=40, num_threads=1, backend=backend), train=False)
        x = [xb for s, (xb, _, _) in enumerate(L.epoch(0)) if L.plan.epoch(0)["index"][s][0] == key[0]][0][0]
        assert x.shape == (3, 40, 40)
        assert x[:, :, 25:].mean() - x[:, :, :15].mean() > 2, f"{backend}: the right half must stay white (no rotation)"


def test_torch_augment_mirror_is_a_flip():
    img = torch.arange(10 * 12 * 3, dtype=torch.uint8).reshape(10, 12, 3)
    assert torch.equal(_torch_augment(img, 0.5, 0.0, 1, 8), _torch_augment(img, 0.5, 0.0, 0, 8).flip(1))
    assert _torch_augment(img, 1.0, 1.0, 0, 8)[0, 0, 0] == img[2, 4, 0]


def test_resume_mid_epoch_replays_remaining_batches(view_near):
    full = list(Loader(view_near.path, "train", CFG, seed=7).epoch(1))
    L = Loader(view_near.path, "train", CFG, seed=7)
    n = len(L.src)
    L.load_state_dict({"epoch": 1, "step": 25, "seed": 7, "n": n})
    rest = list(L.epoch(1))
    assert len(rest) == len(full) - 25
    for (xa, ya, _), (xb, yb, _) in zip(full[25:], rest):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert L.position == (2, 0)
    with pytest.raises(FastFTError, match="different view or seed"):
        L.load_state_dict({"epoch": 1, "step": 2, "seed": 8, "n": n})


def test_ranks_in_separate_processes_cover_the_view(view_near, tmp_path):
    """3 real processes, per-rank batch 8: equal steps, every sample once, padding < one global batch."""
    script = textwrap.dedent(f"""
        import json, sys, torch
        from fastft.loading import Loader, LoaderConfig
        r, w = int(sys.argv[1]), int(sys.argv[2])
        L = Loader({str(view_near.path)!r}, "train", LoaderConfig(batch_size=8, crop=71, num_threads=1), rank=r, world_size=w, seed=0)
        idx = L.epoch_indices(0)
        ys = [y.tolist() for x, y, _ in L.epoch(0)]
        assert ys == [L.src.labels[i].tolist() for i in idx]
        json.dump({{"steps": len(ys), "index": idx.tolist(), "n": len(L.src)}}, open(sys.argv[3], "w"))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), "3", str(tmp_path / f"r{r}.json")]) for r in range(3)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    outs = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(3)]
    n = outs[0]["n"]
    steps = -(-n // 24)
    assert {o["steps"] for o in outs} == {steps} and n % 24
    seen = np.concatenate([np.array(o["index"]).reshape(-1) for o in outs])
    assert set(seen) == set(range(n)) and len(seen) == steps * 24
    assert np.bincount(seen).max() == 2 and (np.bincount(seen) == 2).sum() == steps * 24 - n


def test_loader_refuses_broken_view(view_near, tmp_path):
    import shutil

    from fastft.data.views import open_view

    v = tmp_path / "v"
    shutil.copytree(view_near.path, v)
    next((v / "train").glob("*.idx")).unlink()
    with pytest.raises(FastFTError, match="missing"):
        Loader(v, "train", CFG)
    with pytest.raises(FastFTError, match="not a fastft view"):
        open_view(tmp_path)


def test_augmentation_grows_classes_with_transformed_copies(view_near):
    cfg = LoaderConfig(batch_size=8, crop=71, num_threads=1, augment_to=60)
    L = Loader(view_near.path, "train", cfg, seed=0)
    n0 = len(Loader(view_near.path, "train", CFG).src)
    assert len(L.src) == 8 * 60 and (np.bincount(L.src.labels) == 60).all()
    assert (L.src.aug["scale"][:n0] == 1).all() and (L.src.aug["scale"][n0:] < 1).all()
    ys = torch.cat([y for _, y, _ in L.epoch(0)])
    assert (np.bincount(ys.numpy(), minlength=8)[:8] >= 60).all()
    # a copy decodes to different pixels than its original under the same crop
    copy = n0
    orig = int(np.flatnonzero(L.src.keys[:n0] == L.src.keys[copy])[0])
    plan = {"index": np.array([[orig] * 4 + [copy] * 4]), "weight": np.ones((1, 8), np.float32),
            "crop_x": np.full((1, 8), 0.5, np.float32), "crop_y": np.full((1, 8), 0.5, np.float32), "mirror": np.zeros((1, 8), np.int32)}
    (x, y, _), = list(L.batches(plan))
    assert torch.equal(x[0], x[1]) and not torch.allclose(x[0], x[4], atol=0.1) and y[0] == y[4]
    assert Loader(view_near.path, "val", cfg, train=False).plan.n == len(Loader(view_near.path, "val", CFG, train=False).src)


def test_bench_loader_and_train_report_baselines(view_near, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "fastft", "bench", "loader", str(view_near.path), "--batch", "16", "--crop", "71",
                        "--seconds", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["pytorch_img_s"] > 0 and res["dali_img_s"] > 0 and res["cores"] and "dali" in res
    d = res["class_diversity"]
    assert abs(d["mean_distinct"] - d["iid_expectation"]) < 1.0, "a shuffled epoch should look i.i.d. per batch"
    r = subprocess.run([sys.executable, "-m", "fastft", "bench", "train", str(view_near.path), "--batch", "16", "--crop", "71",
                        "--width", "0.25", "--seconds", "1", "--cache"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert min(res["synthetic_ceiling_img_s"], res["fastft_e2e_img_s"], res["dataloader_e2e_img_s"], res["fastft_cached_e2e_img_s"]) > 0
    assert res["step"] == "eager" and res["ceiling_img_s"]["eager"] == res["synthetic_ceiling_img_s"]
    assert res["fastft_vs_ceiling"] == round(res["fastft_e2e_img_s"] / res["synthetic_ceiling_img_s"], 3)
    assert res["fastft_cached_vs_dataloader"] == round(res["fastft_cached_e2e_img_s"] / res["dataloader_e2e_img_s"], 2)
    assert res["fastft_half_cached_e2e_img_s"] > 0


def test_decoded_cache_serves_the_same_batches(view_near):
    ref = list(Loader(view_near.path, "train", CFG, seed=5).epoch(1))
    for backend in ("dali", "pytorch"):
        L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=1, cache=True, backend=backend), seed=5)
        got = list(L.epoch(1))
        assert len(got) == len(ref)
        for (xa, ya, wa), (xb, yb, wb) in zip(ref, got):
            assert torch.equal(ya, yb) and torch.equal(wa, wb)
            assert torch.allclose(xa, xb, atol=1e-4)
        st = L.stats()
        assert st["cached_images"] == {"device": len(L.src), "host": 0} and st["cached_image_shape"] == (80, 80, 3)
    # §4.6: the cache holds the transformed copies; batches equal the decoding pipeline's
    ref = list(Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=1, augment_to=60), seed=5).epoch(0))
    L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=1, augment_to=60, cache=True), seed=5)
    got = list(L.epoch(0))
    assert L.stats()["cached_images"]["device"] == 8 * 60 and len(got) == len(ref)
    for (xa, ya, _), (xb, yb, _) in zip(ref, got):
        assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-4)


@pytest.mark.parametrize("on_device,on_host,gather", [(0.5, 0.0, "staged"), (0.3, 0.4, "staged"), (0.0, 0.5, "staged"),
                                                      (0.3, 0.4, "gpu")])
def test_partial_cache_decodes_only_the_rest_and_serves_the_same_samples(view_near, on_device, on_host, gather):
    """A view larger than the cache budget: some images on the device, some in the host tier, the rest decoded by
    DALI each epoch; each step has the same samples, crops and flips as the decoding backend, device tier first,
    then host tier, then decoded. ``gather: gpu``: the host tier's crops read by the gather kernel (on CPU through
    Triton's interpreter) instead of the CPU gather."""
    ref_loader = Loader(view_near.path, "train", CFG, seed=5)
    n, per = len(ref_loader.src), 80 * 80 * 3
    L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=1, cache=True,
                                                     cache_gb=int(n * on_device) * per / 1e9 + 1e-12,
                                                     host_cache_gb=int(n * on_host) * per / 1e9, host_gather=gather), seed=5)
    st = L.stats()
    assert st["host_gather"] == gather
    assert not st["cache_filled"] and st["decode_batch"] is not None, "not filled before the first batch; DALI decodes the rest"
    assert abs(st["cache_fraction"] - on_device) < 0.01 and abs(st["host_cache_fraction"] - on_host) < 0.01
    assert _cache_fractions(L) == (st["cache_fraction"], st["host_cache_fraction"]), "what the trainer logs"
    for epoch in (0, 1):
        plan = ref_loader.plan.epoch(epoch)
        tier = L.tiers(plan["index"])
        assert 0 < (tier < DECODE).mean() < 1, "steps mix cached and decoded samples"
        got = list(L.epoch(epoch))
        for s, ((xa, ya, wa), (xb, yb, wb)) in enumerate(zip(ref_loader.epoch(epoch), got)):
            perm = np.argsort(tier[s], kind="stable")  # device tier, host tier, decoded
            assert torch.equal(ya[perm], yb) and torch.equal(wa[perm], wb)
            assert torch.allclose(xa[perm], xb, atol=1e-4)
        if epoch == 1:  # resumed mid-epoch: the same remaining batches
            for (xa, ya, _), (xb, yb, _) in zip(got[2:], list(L.epoch(1, start_step=2)), strict=True):
                assert torch.equal(ya, yb) and torch.equal(xa, xb)
    st = L.stats()
    assert st["cached_images"] == {"device": int(n * on_device), "host": int(n * on_host)} and st["cached_image_shape"] == (80, 80, 3)


@pytest.mark.parametrize("share", [0.3, 1.0])
def test_host_decoded_share_serves_the_same_batches(view_near, share):
    """``cpu_decode``: a second DALI pipeline decodes the last part of every batch on the host cores (cropped and
    normalised after the copy to the GPU); batches equal the one-pipeline ones, in both formats, through a partial
    cache's small decoded remainders, and on resume."""
    ref = list(Loader(view_near.path, "train", CFG, seed=6).epoch(1))
    L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=2, cpu_decode=share), seed=6)
    assert L.stats()["decode_batch"] == ({"main": 5, "host": 3} if share == 0.3 else {"main": 0, "host": 8})
    got = list(L.epoch(1))
    assert len(got) == len(ref)
    for (xa, ya, wa), (xb, yb, wb) in zip(ref, got, strict=True):
        assert torch.equal(ya, yb) and torch.equal(wa, wb) and torch.allclose(xa, xb, atol=1e-4)
    for (xa, _, _), (xb, _, _) in zip(got[3:], L.epoch(1, start_step=3), strict=True):
        assert torch.equal(xa, xb)
    h = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=2, cpu_decode=share, fp16=True,
                                                     channels_last=True), seed=6)
    for (xa, _, _), (xb, _, _) in zip(ref[:3], h.epoch(1)):
        assert xb.dtype == torch.float16 and xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(xa, xb.float(), rtol=1e-3, atol=2e-2)
    n = len(L.src)  # decoded remainders of 0-8 samples per step: split between the pipelines within their sizes
    part = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=2, cpu_decode=share, cache=True,
                                                        cache_gb=(n // 2) * 80 * 80 * 3 / 1e9 + 1e-12), seed=6)
    tier = part.tiers(part.plan.epoch(1)["index"])
    for s, ((xa, ya, _), (xb, yb, _)) in enumerate(zip(ref, part.epoch(1), strict=True)):
        perm = np.argsort(tier[s], kind="stable")
        assert torch.equal(ya[perm], yb) and torch.allclose(xa[perm], xb, atol=1e-4)
    with pytest.raises(FastFTError, match="cpu_decode"):
        Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, cpu_decode=1.5))


def test_feed_without_copy_serves_the_same_batches(view_near, monkeypatch):
    """``FEED_NO_COPY`` (DALI reads the JPEG bytes in the store's maps): the same batches as the copying feed."""
    from fastft.loading import dali

    monkeypatch.setattr(dali, "FEED_NO_COPY", False)
    ref = list(Loader(view_near.path, "train", CFG, seed=7).epoch(0))
    monkeypatch.setattr(dali, "FEED_NO_COPY", True)
    got = list(Loader(view_near.path, "train", CFG, seed=7).epoch(0))
    assert len(got) == len(ref)
    for (xa, ya, _), (xb, yb, _) in zip(ref, got):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_stats_name_the_backend_without_a_cache(view_near):
    """``Loader.stats()`` without a cache: no cached share (None / 0.0), what each DALI pipeline decodes, or the
    fallback's worker processes; every sample in the decoded tier."""
    d = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=1, cpu_decode=0.25), seed=0).stats()
    assert d["backend"] == "dali" and d["cache"] is False and d["cache_fraction"] is None and d["host_cache_fraction"] == 0.0
    assert d["decode_batch"] == {"main": 6, "host": 2} and d["decode_threads"]["host"] >= 1 and d["workers"] is None
    L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=1, backend="pytorch"), seed=0)
    t = L.stats()
    assert t["backend"] == "pytorch" and t["workers"] == 0 and t["decode_batch"] is None and t["cache_fraction"] is None
    assert t["samples"] == len(L.src) and t["steps"] == len(L)
    assert (L.tiers(L.epoch_indices(0)) == DECODE).all()
    assert _cache_fractions(L) == (None, 0.0) and _cache_fractions(object()) == (None, 0.0), "an injected loader may lack stats()"


def test_old_import_path_re_exports_the_loading_package(monkeypatch):
    """``fastft.pipelines`` (kept for one release) names the same objects, and its DALI settings and
    ``usable_cores`` write through to the modules that read them (monkeypatch restores them there)."""
    from fastft import loading, pipelines
    from fastft.loading import dali, resources

    assert (pipelines.Loader, pipelines.LoaderConfig, pipelines.EpochPlan, pipelines.batch_format) == \
        (loading.Loader, loading.LoaderConfig, loading.EpochPlan, loading.batch_format)
    assert pipelines._torch_augment is _torch_augment and pipelines.host_cache_budget is resources.host_cache_budget
    monkeypatch.delenv("FASTFT_NODE_RUNS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    old = dali.FEED_NO_COPY
    monkeypatch.setattr(pipelines, "FEED_NO_COPY", not old)
    monkeypatch.setattr(pipelines, "usable_cores", lambda: 3)
    assert dali.FEED_NO_COPY is (not old) and pipelines.FEED_NO_COPY is (not old) and resources.loader_threads(0) == 3
    monkeypatch.undo()
    assert dali.FEED_NO_COPY is old and pipelines.usable_cores is resources.usable_cores


def test_cache_needs_dali_for_a_partial_split(view_near):
    with pytest.raises(FastFTError, match="needs backend dali"):
        Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, cache=True, backend="pytorch", cache_gb=1e-4))


def test_gpu_batch_format_channels_last_float16_matches(view_near):
    """The format GPU training asks for (float16 in NHWC memory, what bf16 convolutions read without a re-layout)
    holds the same values as the float32 NCHW batches, on every backend and the cache."""
    ref = list(Loader(view_near.path, "train", CFG, seed=2).epoch(0))[:3]
    for kw in ({"backend": "dali"}, {"backend": "pytorch"}, {"cache": True}):
        L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, num_threads=1, fp16=True, channels_last=True, **kw), seed=2)
        for (xa, ya, _), (xb, yb, _) in zip(ref, L.epoch(0)):
            assert xb.dtype == torch.float16 and xb.shape == xa.shape and xb.is_contiguous(memory_format=torch.channels_last), kw
            assert torch.equal(ya, yb) and torch.allclose(xa, xb.float(), rtol=1e-3, atol=2e-2), kw


def test_node_runs_split_the_machine_memory_and_cores(monkeypatch, view_near):
    """Runs a sweep packs on one node (``FASTFT_NODE_RUNS``, set by its slots) and the ranks of a run on the node
    (``LOCAL_WORLD_SIZE``; not the ranks on other nodes) split the host-memory cache budget and the cores their
    loaders decode with."""
    from fastft.loading import host_cache_budget
    from fastft.sweep import slots_for

    monkeypatch.delenv("FASTFT_NODE_RUNS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    one = host_cache_budget()
    assert one > 0
    monkeypatch.setenv("FASTFT_NODE_RUNS", "8")
    assert host_cache_budget() < one
    monkeypatch.setenv("FASTFT_NODE_RUNS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert host_cache_budget(world_size=8) < one  # 4 ranks here (of 8 on two nodes) each cache the whole split
    from fastft.loading import resources

    monkeypatch.setattr(resources, "usable_cores", lambda: 16)  # the division, as on a 16-core node
    for runs, local, world, threads in (("1", None, 1, 16), ("2", None, 1, 8), ("1", "2", 4, 8), ("1", None, 2, 8), ("2", "4", 8, 2)):
        monkeypatch.setenv("FASTFT_NODE_RUNS", runs)
        if local:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        else:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71), rank=0, world_size=world, seed=0)
        assert L.stats()["decode_threads"]["main"] == threads
    assert [s["FASTFT_NODE_RUNS"] for s in slots_for(None, 1, 2)] == ["2", "2"]
    assert [s["FASTFT_NODE_RUNS"] for s in slots_for("0,1", 2, 1)] == ["4"] * 4


def test_compiled_cache_crop_equals_the_eager_ops():
    """The cache's crop + normalise, compiled (what whole device-tier batches use on GPUs; here inductor's CPU
    backend), equals the eager gather + normalise."""
    from fastft.loading.augment import _crop, _crop_normalize, _normalize
    from fastft.preprocess import mean_std

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (20, 80, 80, 3), dtype=torch.uint8, generator=g)
    slot, x0, y0 = (torch.randint(0, n, (8,), generator=g) for n in (20, 10, 10))
    mirror = torch.rand(8, generator=g) > 0.5
    for (mean, std), channels_last in [((torch.tensor(m), torch.tensor(s)), cl) for m, s in map(mean_std, ("caffe", "imagenet"))
                                       for cl in (False, True)]:
        ref = _normalize(_crop(imgs, slot, x0, y0, mirror, 71), mean, std, False, channels_last)
        got = torch.compile(_crop_normalize, dynamic=False)(imgs, slot, x0, y0, mirror, mean, std, 71, False, channels_last)
        assert torch.allclose(ref, got, rtol=1e-6, atol=1e-5) and got.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(_crop(imgs, slot, x0, y0, mirror, 71)[0], (imgs[slot[0], y0[0]:y0[0] + 71, x0[0]:x0[0] + 71].flip(1)
                                                                   if mirror[0] else imgs[slot[0], y0[0]:y0[0] + 71, x0[0]:x0[0] + 71]))


def test_gpu_gather_reads_the_same_crops_as_the_cache():
    """The host tier's gather kernel (fastft.kernels.host_gather; on CPU through Triton's interpreter) returns the
    cache's own crop byte for byte: random images, slots, offsets up to the far edge, mirrors, odd crop sizes, an
    empty step, a partly filled buffer, any grid."""
    pytest.importorskip("triton")
    from fastft.kernels.host_gather import gather_crops
    from fastft.loading.augment import _crop

    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (13, 40, 37, 3), dtype=torch.uint8, generator=g)
    for crop, k, programs in ((37, 5, 0), (23, 9, 3), (1, 4, 1), (17, 0, 0)):
        slot = torch.randint(0, 13, (k,), generator=g)
        y0, x0 = torch.randint(0, 40 - crop + 1, (k,), generator=g), torch.randint(0, 37 - crop + 1, (k,), generator=g)
        if k:
            x0[0], y0[0] = 37 - crop, 40 - crop  # the far corner
        mirror = torch.rand(k, generator=g) > 0.5
        out = torch.full((k + 2, crop, crop, 3), 7, dtype=torch.uint8)
        got = gather_crops(imgs, slot, x0, y0, mirror, crop, out=out, programs=programs)
        assert got.shape == (k, crop, crop, 3) and torch.equal(got, _crop(imgs, slot, x0, y0, mirror, crop)), (crop, k)
        assert (out[k:] == 7).all(), "nothing written past the step's samples"
    with pytest.raises(ValueError, match="uint8"):
        gather_crops(imgs.float(), slot, x0, y0, mirror, 17)


def test_host_gather_option_is_checked_before_work(view_near):
    with pytest.raises(FastFTError, match="host_gather must be one of staged, gpu"):
        Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, cache=True, host_gather="zero-copy",
                                                     cache_gb=1e-4, host_cache_gb=1e-4))
