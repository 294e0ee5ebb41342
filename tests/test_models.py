"""The model registry: a second architecture, registered here as the README's "Adding a model" registers it, trains
from scratch and fine-tunes through the real ``fastft train`` entry point, and its model.pt names it and loads back
through weights and the analyses' loader; config mistakes about models are one-line errors before work; AlexNet
runs keep the run ids they had before models had names."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fastft import models, runs, weights
from fastft.analysis.extract import check_layers, input_size, load_model
from fastft.cli import main as cli_main
from fastft.errors import FastFTError
from fastft.models import ModelSpec, register
from fastft.train.config import TrainConfig, run_identity

# ---------------------------------------------------------------- the README's example model (fastft/models/tiny.py)
LAYERS = ("conv1", "conv2", "fc")
FREEZABLE = LAYERS[:2]


@dataclass(frozen=True)
class Config:
    num_classes: int
    input_size: int = 71


class TinyNet(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, cfg.num_classes)

    def forward(self, x, taps=None):
        out = {}
        for name in LAYERS:
            x = out[name] = getattr(self, name)(x)
        return x if taps is None else {k: out[k] for k in taps}

    def replace_head(self, num_classes):
        self.fc = nn.Linear(self.fc.in_features, num_classes).to(self.fc.weight.device)
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes)

    def freeze(self, n):
        for name in FREEZABLE[:n]:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        return list(FREEZABLE[:n])


def build(num_classes, **keys):
    return TinyNet(Config(num_classes, **keys))


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def tiny():
    """``tiny`` registered (this module is its module) for this module's tests only."""
    register(ModelSpec("tiny", __name__, LAYERS, FREEZABLE, keys={"crop": "input_size"}))
    yield "tiny"
    del models.REGISTRY["tiny"]


TINY = ["model=tiny", "crop=71", "batch_size=32", "preprocess=imagenet", "plateau_epochs=0", "progress=false", "num_threads=1"]


def _train(*args) -> None:
    assert cli_main(["train", *map(str, args)]) == 0


def test_registered_model_trains_finetunes_and_loads_back(tiny, demo_spec, store, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    demo_spec.save(spec)
    data = [f"spec={spec}", f"store={store}", f"out={tmp_path}"]
    _train(*data, "set=near", "name=src", "epochs=1", *TINY)
    (src,) = tmp_path.glob("src-*")
    _train(*data, "set=target", "name=ft", "mode=finetune", f"source={src}", "freeze=1", "epochs=1", *TINY)
    (ft,) = tmp_path.glob("ft-*")

    a, b = (weights.read_model(d) for d in (src, ft))
    assert a.model_name == b.model_name == "tiny"
    assert a.model_config == {"name": "tiny", "num_classes": 8, "input_size": 71}
    assert b.model_config["num_classes"] == len(b.classes) and b.classes != a.classes
    assert torch.load(ft / "model.pt", weights_only=True)["model_config"]["name"] == "tiny"
    for k in a.state:  # freeze=1 kept conv1 fixed; conv2 trained; the head is new (its own shape)
        if k.startswith("conv1"):
            assert torch.equal(a.state[k], b.state[k]), k
        elif k.startswith("conv2"):
            assert not torch.equal(a.state[k], b.state[k]), k
    assert b.state["fc.weight"].shape[0] == b.config.num_classes
    model, mf = load_model(ft)
    assert isinstance(model, TinyNet) and not model.training and input_size(model, mf) == 71
    assert model(torch.zeros(2, 3, 71, 71)).shape == (2, b.config.num_classes)
    assert set(model(torch.zeros(1, 3, 71, 71), taps=("conv2", "fc"))) == {"conv2", "fc"}
    with pytest.raises(FastFTError, match=r"model tiny has no layer fc7"):  # an AlexNet analysis on this model
        check_layers(mf, ("fc7",))
    assert runs.read_final(ft)["run_id"] == ft.name.rsplit("-", 1)[1]
    # this model's weights as an AlexNet run's source: named before any work, no run directory
    assert cli_main(["train", *data, "set=target", "name=bad", "mode=finetune", f"source={src}", "epochs=1",
                     "crop=71", "batch_size=32", "preprocess=imagenet", "progress=false"]) == 2
    assert f"source {src / 'model.pt'} is a tiny model; this run asks model alexnet (set model: tiny)" in capsys.readouterr().err
    assert not list(tmp_path.glob("bad-*"))


@pytest.mark.parametrize("args,first", [(["model=resnet999"], "fastft: error: model 'resnet999' is not registered; models: alexnet"),
                                        (["model=tiny", "width=0.5"], "fastft: error: width 0.5: model tiny takes no width"),
                                        (["model=tiny", "init=kaiming"], "fastft: error: init 'kaiming': model tiny takes no init"),
                                        (["model=tiny", "mode=finetune", "source=s", "freeze=3"], "fastft: error: freeze must be 0 … 2")])
def test_model_mistakes_are_one_line_errors_before_work(tiny, args, first, tmp_path, capsys):
    rc = cli_main(["train", "view=/nonexistent/view", f"out={tmp_path}", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(first), err
    assert list(tmp_path.iterdir()) == []


def test_model_files_without_a_name_are_alexnet(tmp_path):
    """model.pt files written before model_config named its model hold an AlexNet, and load as one."""
    m = models.build("alexnet", 4, width=0.25, input_size=71)
    runs.save_file({"model": m.state_dict(), "model_config": vars(m.cfg)}, tmp_path / "old.pt")
    mf = weights.read_model(tmp_path / "old.pt")
    assert mf.model_name == "alexnet" and type(mf.model()).__name__ == "AlexNet"
    runs.save_file({"model": m.state_dict(), "model_config": {"name": "vgg99", **vars(m.cfg)}}, tmp_path / "vgg.pt")
    with pytest.raises(FastFTError, match=r"vgg\.pt: model_config: model 'vgg99' is not registered; models: alexnet"):
        weights.read_model(tmp_path / "vgg.pt")


META = {"classes": ["n01440764", "n01443537"], "manifest_sha256": "ab" * 32,
        "splits": {"train": {"keys_sha256": "cd" * 32}, "val": {"keys_sha256": "ef" * 32}}}


def test_alexnet_run_ids_are_unchanged(tiny):
    """An AlexNet run keeps the id it had before the ``model`` key existed (the ids below were computed by fastft
    at the commit before it: a sweep's finished runs stay finished); another model is another run."""
    for kw, precision, source, before in (({}, "fp32", None, "2bda6ac251da"),
                                          (dict(mode="finetune", source="s", width=0.25, crop=71, freeze=3), "bf16", "src123", "13dceed808cc")):
        implicit, explicit = TrainConfig(view="v", **kw), TrainConfig(view="v", model="alexnet", **kw)
        ids = [runs.run_id(run_identity(c, META, precision, source)) for c in (implicit, explicit)]
        assert ids == [before, before]
        assert "model" not in run_identity(explicit, META, precision, source)
    tiny_id = run_identity(TrainConfig(view="v", model="tiny"), META, "fp32", None)
    assert tiny_id["model"] == "tiny" and runs.run_id(tiny_id) != "2bda6ac251da"
