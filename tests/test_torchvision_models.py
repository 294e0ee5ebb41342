"""torchvision's models as fastft models: each builds and meets the model protocol (named taps, freeze, a new head,
torchvision's own forward and state dict); ResNet-18 trains through the real ``fastft train`` and fine-tunes from
its run and from a plain torchvision state dict (a wrong model's state dict refused, naming its keys); the paper's
AlexNet's keys and too-small crops are one-line errors before work; the analyses read a ResNet's own layers."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

from fastft import models, weights
from fastft import analysis as an
from fastft.cli import main as cli_main
from fastft.errors import FastFTError
from fastft.train.config import TrainConfig, key_help

TV = ("resnet18", "resnet50", "vgg16_bn", "tv-alexnet")
# a ResNet-18 small enough for 2 CPU cores: 48-pixel crops of the 80-pixel store
RESNET = ["model=resnet18", "crop=48", "batch_size=32", "plateau_epochs=0", "progress=false", "num_threads=1", "epochs=1"]


def _train(*args) -> None:
    assert cli_main(["train", *map(str, args)]) == 0


@pytest.mark.parametrize("name", TV)
def test_each_model_builds_with_named_taps_freeze_and_a_new_head(name):
    s = models.spec(name)
    size = max(s.min_crop, 48)
    torch.manual_seed(0)
    m = models.build(name, 7, input_size=size)
    x = torch.randn(2, 3, size, size)
    m.eval()
    with torch.no_grad():
        taps = m(x, taps=s.layers)
    assert tuple(taps) == s.layers and taps[s.head].shape == (2, 7)
    assert taps[s.feature_layer].dim() == 2 and taps[s.conv].dim() == 4  # pooled features; the last conv's maps
    # torchvision's own network: its state dict under torchvision's names loads into torchvision's model, same output
    tv = getattr(torchvision.models, s.torchvision)(num_classes=7)
    tv.load_state_dict(m.torchvision_state_dict())
    tv.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), tv(x), atol=1e-5) and torch.allclose(m(x), taps[s.head], atol=1e-5)
    # freeze=n: the first n blocks take no gradient (and a ResNet's batch norms keep their statistics), the rest learn
    n = len(s.freezable) - 1
    assert m.freeze(n) == list(s.freezable[:n])
    m.train()
    for layer in s.freezable:
        grads = {p.requires_grad for p in getattr(m, layer).parameters()}
        assert grads == ({False} if layer in s.freezable[:n] else {True}), layer
        bns = [b for b in getattr(m, layer).modules() if isinstance(b, torch.nn.BatchNorm2d)]
        assert all(b.training == (layer not in s.freezable[:n]) for b in bns), layer
    with pytest.raises(FastFTError, match=f"freeze must be 0..{len(s.freezable)}"):
        m.freeze(len(s.freezable) + 1)
    m.replace_head(3)
    assert m(x).shape == (2, 3) and m.cfg.num_classes == 3 and m.cfg.input_size == size


def test_preprocess_auto_and_help():
    """``preprocess: auto``: caffe for the paper's AlexNet (its runs unchanged), torchvision's mean/std for
    torchvision's models; given explicitly it is kept; ``fastft train --help`` names the models."""
    assert TrainConfig(view="v").preprocess == "caffe"
    assert TrainConfig(view="v", model="resnet18").preprocess == "imagenet"
    assert TrainConfig(view="v", model="resnet18", preprocess="caffe").preprocess == "caffe"
    helps = {k: h for k, _, h in key_help()}
    assert all(n in helps["model"] for n in (*TV, "alexnet"))


@pytest.mark.parametrize("args,first", [
    (["model=resnet18", "width=0.5"], "fastft: error: width 0.5: model resnet18 takes no width"),
    (["model=resnet18", "groups=true"], "fastft: error: groups True: model resnet18 takes no groups"),
    (["model=resnet50", "init=kaiming"], "fastft: error: init 'kaiming': model resnet50 takes no init"),
    (["model=vgg16_bn", "conv1_pad=4"], "fastft: error: conv1_pad 4: model vgg16_bn takes no conv1_pad"),
    (["model=resnet18", "crop=31"], "fastft: error: crop must be >= 32 (resnet18's smallest input)"),
    (["model=tv-alexnet", "crop=62"], "fastft: error: crop must be >= 63 (tv-alexnet's smallest input)"),
    (["crop=66"], "fastft: error: crop must be >= 67 (alexnet's smallest input)"),
    (["model=resnet18", "mode=finetune", "source=s", "freeze=6"], "fastft: error: freeze must be 0 … 5 (the layers stem … layer4"),
])
def test_model_keys_and_crops_are_checked_per_model(args, first, tmp_path, capsys):
    rc = cli_main(["train", "view=/nonexistent/view", f"out={tmp_path}", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(first), err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def resnet_runs(demo_spec, store, tmp_path_factory):
    """A ResNet-18 trained on the near set, and one fine-tuned from it on the target with stem and layer1 fixed."""
    out = tmp_path_factory.mktemp("tvruns")
    spec = out / "spec.json"
    demo_spec.save(spec)
    data = [f"spec={spec}", f"store={store}", f"out={out}"]
    _train(*data, "set=near", "name=src", "epochs=2", *RESNET)
    (src,) = out.glob("src-*")
    _train(*data, "set=target", "name=ft", "mode=finetune", f"source={src}", "freeze=2", *RESNET)
    (ft,) = out.glob("ft-*")
    return out, data, src, ft


def test_resnet18_trains_and_finetunes_through_fastft_train(resnet_runs):
    out, _, src, ft = resnet_runs
    a, b = (weights.read_model(d) for d in (src, ft))
    assert a.model_name == b.model_name == "resnet18" and a.preprocess == b.preprocess == "imagenet"
    assert a.model_config == {"name": "resnet18", "num_classes": 8, "input_size": 48}
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["config"]["model"] == "resnet18" and cfg["config"]["preprocess"] == "imagenet"
    assert cfg["identity"]["model"] == "resnet18"
    for k in a.state:  # stem and layer1 fixed, running statistics included; layer2 on trained; the head is new
        if k.split(".")[0] in ("stem", "layer1"):
            assert torch.equal(a.state[k], b.state[k]), k
        elif k.startswith("layer2.") and k.endswith("weight"):
            assert not torch.equal(a.state[k], b.state[k]), k
    assert b.state["fc.weight"].shape[0] == b.config.num_classes == len(b.classes)
    assert json.loads((ft / "final.json").read_text())["frozen"] == ["stem", "layer1"]
    mf, ident = weights.read_source(src / "model.pt", "resnet18")  # the run's model.pt file alone is a source too
    assert mf.model_name == "resnet18" and ident == json.loads((src / "final.json").read_text())["run_id"]


def test_analyses_read_a_resnets_own_layers(resnet_runs, capsys):
    _, _, src, ft = resnet_runs
    assert cli_main(["analyze", "svm", str(ft)]) == 0
    assert "linear SVM on pool:" in capsys.readouterr().out
    (res,) = (ft / "analysis").glob("svm-*.json")
    r = json.loads(res.read_text())
    assert r["layer"] == "pool" and 0 <= r["summary"]["svm_top1"] <= 100
    view = json.loads((ft / "config.json").read_text())["config"]["view"]
    f = an.filters([src, ft], view)  # layer4's 512 filters, per-filter AP
    assert set(f["mean_sensitivity"]) == {src.name, ft.name}
    assert json.loads(next((ft / "analysis").glob("filters-*.json")).read_text())["layer"] == "layer4"
    p = an.probes([ft], view, pool=1, epochs=1, min_steps=2)  # every named layer of a ResNet by default
    assert p["layers"] == list(models.spec("resnet18").layers) and set(p["accuracy"][ft.name]) == set(p["layers"])
    assert all(0 <= a <= 100 for a in p["accuracy"][ft.name].values()), p["accuracy"]
    # classviz: the ascent raises each class's score; distance: the source model's pooled features, source -> target
    c = an.class_images(ft, [0, 1], steps=20)
    assert all(b > a for a, b in zip(c["score_before"], c["score_after"])), c
    src_view = json.loads((src / "config.json").read_text())["config"]["view"]
    d = an.feature_distance(src, src_view, view)
    assert d["layer"] == "pool" and 0 <= d["summary"]["feature_cosine_nearest"] <= 2
    assert 0 < d["summary"]["wordnet_wup_nearest"] <= 1, "the demo's classes are wnids: WordNet's distance is there too"


def test_classviz_moves_an_untrained_resnet_off_its_zero_gradient(tmp_path):
    """An untrained ResNet's gradient at the mean image is exactly 0 (no conv bias, batch norm's zero shift): the
    ascent starts a hair off it, says so, and the scores rise."""
    torch.manual_seed(0)
    m = models.build("resnet18", 4, input_size=48).eval()
    f = tmp_path / "untrained.pt"
    torch.save({"model": m.state_dict(), "model_config": {"name": "resnet18", **vars(m.cfg)}, "classes": list("abcd")}, f)
    r = an.class_images(f, [0, 1], steps=5, device="cpu")
    assert all("exactly 0" in x for x in r["start"]) and all(b > a for a, b in zip(r["score_before"], r["score_after"])), r


def test_a_torchvision_state_dict_as_source(resnet_runs, tmp_path, capsys):
    """``source=FILE`` with torchvision's own state dict: mapped onto fastft's module, its head replaced; the run's
    identity holds the file's content. Another architecture's state dict is named by its keys before any work."""
    out, data, _, _ = resnet_runs
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(num_classes=10)
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    _train(*data, "set=target", "name=tv", "mode=finetune", f"source={tmp_path / 'resnet18.pth'}", "freeze=5", *RESNET)
    (run,) = out.glob("tv-*")
    got, theirs = weights.read_model(run), tv.state_dict()
    for ours, k in models.build("resnet18", 2, input_size=48)._tv_keys.items():  # fastft's name -> torchvision's
        if not k.startswith("fc."):  # every conv and batch norm kept fixed (freeze=5): exactly torchvision's tensors
            assert torch.equal(got.state[ours], theirs[k]), k
    assert got.state["fc.weight"].shape == (len(got.classes), 512)
    assert json.loads((run / "config.json").read_text())["identity"]["source"].startswith("torchvision resnet18 sha256:")

    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), tmp_path / "resnet34.pth")
    for model, src, msg in (("resnet18", "resnet34.pth", "is not a torchvision resnet18 state dict: unexpected 96 key(s): "
                                                         "layer1.2.conv1.weight"),
                            ("resnet50", "resnet18.pth", "is not a torchvision resnet50 state dict: missing"),
                            ("alexnet", "resnet18.pth", "is a bare state dict, without the model_config")):
        extra = ["crop=71", "batch_size=32", "progress=false"] if model == "alexnet" else [*RESNET, f"model={model}"]
        rc = cli_main(["train", *data, "set=target", "name=bad", "mode=finetune", f"source={tmp_path / src}", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err, err
    assert not list(out.glob("bad-*"))
    fresh = tmp_path / "fresh"  # named before any work: no view resolved, nothing written
    rc = cli_main(["train", *data[:2], f"out={fresh}", "set=target", "mode=finetune", f"source={tmp_path / 'resnet34.pth'}", *RESNET])
    assert rc == 2 and "is not a torchvision resnet18 state dict" in capsys.readouterr().err
    assert not fresh.exists() or not any(fresh.iterdir())


PLAN = """name: tv
construction: near-far
params: {within: store, target: 4, source: 8, cap: 20}
seeds: [0]
defaults: {model: resnet18, crop: 48, batch_size: 32, epochs: 1, num_threads: 1}
runs:
  - {name: near, set: near}
  - {name: ft, set: target, mode: finetune, source: near, overrides: {freeze: 2%s}}
"""


def test_plans_take_a_model_and_its_keys_are_checked_before_any_run(store, tmp_path, capsys):
    ok, bad = tmp_path / "tv.yaml", tmp_path / "bad.yaml"
    ok.write_text(PLAN % "")
    bad.write_text(PLAN % ", groups: true")
    assert cli_main(["sweep", str(ok), "--store", str(store), "--out", str(tmp_path / "o"), "--dry-run", "--quiet"]) == 0
    assert "2 runs" in capsys.readouterr().out
    assert cli_main(["sweep", str(bad), "--store", str(store), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "groups True: model resnet18 takes no groups" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("*-*/sweep.log")), "no run started"


def test_a_plan_fine_tunes_from_a_torchvision_file(store, tmp_path, capsys):
    """A plan's run whose source is a file (``overrides: {source: FILE}``), not another run: the sweep gives it the
    id the trainer computes (the file's content), so it finishes as the run the sweep expects."""
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    plan = tmp_path / "file.yaml"
    plan.write_text(PLAN.split("runs:")[0] + "runs:\n  - {name: tv, set: target, mode: finetune, overrides: "
                    f"{{source: {tmp_path / 'r18.pth'}, freeze: 5, plateau_epochs: 0}}}}\n")
    assert cli_main(["sweep", str(plan), "--store", str(store), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    (run,) = [d for d in (tmp_path / "o").glob("tv-*") if (d / "final.json").exists()]
    assert json.loads((run / "config.json").read_text())["identity"]["source"].startswith("torchvision resnet18 sha256:")
    assert len(list((tmp_path / "o").glob("tv-*"))) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["graph+fused", "compile+graph+fused"])
def test_a_resnets_gpu_step_matches_eager(mode):
    """The GPU step options (CUDA graph, fused SGD, torch.compile, channels_last) on a ResNet with batch norm: the
    same losses and weights as eager steps, the graph re-captured when the LR changes."""
    from fastft.bench import _make_step

    torch.manual_seed(0)
    a = _make_step("eager", 10, "cuda", "fp32", 1.0, 64, model="resnet18")
    b = _make_step(mode, 10, "cuda", "fp32", 1.0, 64, model="resnet18")
    b.model.load_state_dict(a.model.state_dict())
    for i in range(8):
        if i == 5:
            for s in (a, b):
                s.opt.param_groups[0]["lr"] = 0.001
        x, y = torch.randn(16, 3, 64, 64, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
        la, lb = float(a(x, y)), float(b(x, y))
        assert abs(la - lb) < 1e-2 * max(1, abs(la)), (i, la, lb)
    assert b._lr == (0.001,)
    for (k, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-2, rtol=1e-2), k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_frozen_resnet_fine_tune_on_the_gpu_keeps_its_fixed_layers(resnet_runs):
    """A ResNet fine-tune with stem and layer1 fixed, on the GPU with every step option on (compile, CUDA graph,
    fused SGD, channels_last, the device cache): those layers' weights and batch-norm statistics stay the source's
    bit for bit (a graph or compiled step that ran them in training mode would move the statistics)."""
    out, data, src, _ = resnet_runs
    _train(*data, "set=target", "name=gpuft", "mode=finetune", f"source={src}", "freeze=2", *RESNET, "device=cuda",
           "compile=true", "cache=true", "epochs=2")
    (ft,) = out.glob("gpuft-*")
    a, b = (weights.read_model(d) for d in (src, ft))
    for k in a.state:
        if k.split(".")[0] in ("stem", "layer1"):
            assert torch.equal(a.state[k].cpu(), b.state[k].cpu()), k
        elif k.startswith("layer2.") and k.endswith("weight"):
            assert not torch.equal(a.state[k].cpu(), b.state[k].cpu()), k
    assert json.loads((ft / "final.json").read_text())["device"].startswith("cuda")


def test_load_model_gives_a_resnets_own_evaluation(resnet_runs):
    """`fastft.load_model` on a ResNet run: the module, its preprocessing (torchvision's mean/std, not Caffe's) and its
    transform reproduce the run's evaluation, input for input and the top-1 of final.json."""
    from test_load_model import fastft_eval_inputs, val_images

    import fastft

    _, _, _, ft = resnet_runs
    m = fastft.load_model(ft)
    assert m.preprocess["name"] == "imagenet" and m.preprocess["crop"] == 48
    view, images, wnids = val_images(ft)
    x_fastft, y_fastft = fastft_eval_inputs(view, 48, "imagenet")
    x = torch.stack([m.transform(im) for im in images])
    # DALI divides by std as a multiply by 1/std: a float's last bit apart, no more
    assert torch.allclose(x, x_fastft, rtol=0, atol=1e-6), f"inputs differ by up to {(x - x_fastft).abs().max()}"
    assert torch.equal(torch.tensor([m.classes.index(w) for w in wnids]), y_fastft)
    top1 = 100.0 * (m.logits(images, batch_size=16).argmax(1) == y_fastft).double().mean().item()
    assert abs(top1 - json.loads((ft / "final.json").read_text())["top1"]) < 1e-9


def test_a_resnets_model_file_loads_into_plain_torchvision_as_the_readme_shows(resnet_runs, tmp_path):
    """The README's plain-torchvision block on the fine-tuned ResNet's model.pt: torchvision's own resnet18 loads it
    by the names the file records and gives load_model's logits; a file whose names do not cover its tensors is refused."""
    from test_load_model import readme_blocks, val_images

    import fastft

    _, _, _, ft = resnet_runs
    code = readme_blocks()[2]
    assert "runs/ft-<id>" in code and "torchvision.models.get_model" in code
    ns = {}
    exec(compile(code.replace("runs/ft-<id>", str(ft)), "README.md", "exec"), ns)
    model, m = ns["model"], fastft.load_model(ft)
    assert type(model) is torchvision.models.ResNet and ns["tv"]["name"] == "resnet18"
    _, images, _ = val_images(ft)
    x = torch.stack([m.transform(im) for im in images[:8]])
    with torch.no_grad():
        assert torch.equal(model(x), m.module(x))
    theirs = m.module.torchvision_state_dict()  # what the README gives as the way back from fastft's side
    assert theirs.keys() == model.state_dict().keys() and all(torch.equal(v, model.state_dict()[k]) for k, v in theirs.items())
    blob = torch.load(ft / "model.pt", weights_only=True)
    keys = dict(blob["torchvision"]["keys"])
    keys.pop(next(iter(keys)))
    bad = tmp_path / "bad-names.pt"
    torch.save({**blob, "torchvision": {**blob["torchvision"], "keys": keys}}, bad)
    with pytest.raises(FastFTError, match="torchvision must be a mapping"):
        weights.read_model(bad)


@pytest.mark.parametrize("args,msg", [
    (["--model", "resnet19"], "model 'resnet19' is not registered"),
    (["--model", "resnet18", "--width", "0.5"], "model resnet18 does not take it"),
    (["--model", "resnet18", "--crop", "16"], "smaller than model resnet18's smallest input (32)"),
])
def test_bench_train_names_a_wrong_model_or_its_keys_before_measuring(args, msg, view_near, capsys):
    """`fastft bench train` checks --model and the keys given with it first: one line and exit 2, not a JSON whose
    every mode holds the error (and not a width recorded that the model never took)."""
    assert cli_main(["bench", "train", str(view_near.path), "--device", "cpu", "--seconds", "0.1", *args]) == 2
    assert msg in capsys.readouterr().err


def test_a_state_dict_is_read_through_wrappers_and_a_wrong_model_is_told_which_fits(tmp_path):
    """A torchvision state dict saved from DataParallel/DDP (``module.``) or torch.compile (``_orig_mod.``) is read
    as the model's own; one given for another model names the model it fits — for a torchvision model and for the
    paper's AlexNet (which reads fastft files only)."""
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    f = tmp_path / "ddp.pth"
    torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, f)
    mf, ident = weights.read_source(f, "resnet18")
    assert mf.config.num_classes == 10 and ident.startswith("torchvision resnet18 sha256:")
    back = models.build("resnet18", 10)
    back.load_state_dict(mf.state)
    assert all(torch.equal(v, sd[k]) for k, v in back.torchvision_state_dict().items())
    for model, hint in (("resnet34", "(it fits resnet18: set model=resnet18)"),
                        ("alexnet", "it is torchvision's resnet18 state dict: set model=resnet18")):
        with pytest.raises(FastFTError) as e:
            weights.read_source(f, model)
        assert hint in str(e.value), str(e.value)
