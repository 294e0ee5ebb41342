"""``copy: n`` (Yosinski et al. 2014): a fine-tune takes its source's first n layers bit for bit, re-initialises the
rest from its seed (as a scratch model of that seed), keeps the copied ones fixed with ``freeze`` — and every mistake
is named before any work. Real ``fastft train`` runs on the synthetic store."""
import json

import pytest
import torch

from clirun import SMALL, fastft
from fastft import models, weights
from fastft.errors import FastFTError
from fastft.models import ALEXNET_LAYERS
from fastft.train import transfer
from fastft.train.config import TrainConfig, config_identity

KEYS = {"width": 0.25, "input_size": 71, "init": "paper-scaled"}


def _weights(state: dict, layer: str) -> list[str]:
    return [k for k in state if k.startswith(layer + ".") and k.endswith("weight")]


def _source(seed=7, classes=10):
    torch.manual_seed(seed)
    return models.build("alexnet", classes, **KEYS).state_dict()


MODELS = {"alexnet": KEYS, "resnet18": {"input_size": 48}}  # the paper's AlexNet and a torchvision model (batch norm)
CASES = [(m, n) for m in MODELS for n in range(1, len(models.spec(m).layers))]


@pytest.mark.parametrize("model,n", CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_the_first_n_layers_are_the_sources_bit_for_bit_and_the_rest_a_scratch_models_of_the_seed(model, n):
    keys, layers = MODELS[model], models.spec(model).layers
    torch.manual_seed(7)
    src = models.build(model, 10, **keys).state_dict()
    m = transfer.build(model, 4, keys, src, n, seed=3).state_dict()
    torch.manual_seed(3)
    scratch = models.build(model, 4, **keys).state_dict()
    again = transfer.build(model, 4, keys, src, n, seed=3).state_dict()
    other_seed = transfer.build(model, 4, keys, src, n, seed=4).state_dict()
    assert {k.split(".", 1)[0] for k in m} <= set(layers), "every tensor belongs to a named layer"
    for i, layer in enumerate(layers):
        keys_of = [k for k in m if k.startswith(layer + ".")]
        assert keys_of or layer == "pool", layer  # a ResNet's pool holds no tensors
        for k in keys_of:  # parameters and buffers (a ResNet's batch-norm statistics) alike
            assert torch.equal(m[k], again[k]), f"{k}: not deterministic for one seed"
            if i < n:
                assert torch.equal(m[k], src[k]), f"{k} (copied) differs from the source"
            else:
                assert torch.equal(m[k], scratch[k]), f"{k} (fresh) is not the scratch model's of the seed"
        for k in _weights(m, layer):
            if i >= n:  # fresh weights: neither the source's nor another seed's (a batch norm's weight starts at 1)
                if m[k].shape == src[k].shape and m[k].dim() > 1:  # (the head's differs: 4 target classes, 10 source ones)
                    assert not torch.equal(m[k], src[k])
                if m[k].dim() > 1:
                    assert not torch.equal(m[k], other_seed[k])
            else:
                assert torch.equal(m[k], other_seed[k])  # copied layers do not depend on the seed


def test_copied_layers_must_fit_the_source():
    src = _source()
    narrower = {**KEYS, "input_size": 99}  # fc6 reads a larger pool5: conv layers fit, fc6 does not
    transfer.build("alexnet", 4, narrower, src, 5, seed=0)
    with pytest.raises(FastFTError, match=r"fc6\.1\.weight .* vs"):
        transfer.build("alexnet", 4, narrower, src, 6, seed=0)
    with pytest.raises(FastFTError, match="the source has no conv2"):
        transfer.build("alexnet", 4, KEYS, {k: v for k, v in src.items() if not k.startswith("conv2")}, 3, seed=0)


@pytest.mark.parametrize("kw, says", [
    ({"copy": 3}, "needs mode: finetune and source"),
    ({"mode": "finetune", "copy": 3}, "needs source"),                        # caught by the finetune check first
    ({"mode": "finetune", "source": "s", "copy": 8}, r"copy must be 1 … 7 .*head fc8 is always new"),
    ({"mode": "finetune", "source": "s", "copy": 0}, "copy 0 copies nothing: use mode: scratch"),
    ({"mode": "finetune", "source": "s", "copy": -1}, "copy must be 1 … 7"),
    ({"mode": "finetune", "source": "s", "copy": 2, "freeze": 3}, r"freeze 3 would keep conv3 fixed, which copy 2 re-initialises"),
    ({"mode": "finetune", "source": "s", "copy": 1, "freeze": 7}, r"conv2, conv3, conv4, conv5, fc6, fc7 fixed"),
])
def test_copy_mistakes_are_named_before_any_work(kw, says):
    with pytest.raises(FastFTError, match=says):
        TrainConfig(view="v", **kw).validate()


def test_copy_enters_the_run_identity_only_when_set():
    base = dict(view="v", mode="finetune", source="s", freeze=3)
    plain = config_identity(TrainConfig(**base))
    assert "copy" not in plain  # every fine-tune without copy keeps the id it had before copy existed
    assert config_identity(TrainConfig(**base, copy=3)) == {**plain, "copy": 3}
    assert config_identity(TrainConfig(**base, copy=4)) != config_identity(TrainConfig(**base, copy=3))
    for n in range(3, 8):
        TrainConfig(**base, copy=n).validate()


def test_train_copies_freezes_and_fine_tunes(source_run, store):
    """BnB / AnB (copy 3, freeze 3): after training, conv1 … conv3 are still the source's bit for bit, the later layers
    are not; BnB+ / AnB+ (copy 3): the copied layers moved too. A mistake fails before a run directory exists."""
    out, spec, src_dir = source_run
    src = weights.read_model(src_dir).state
    common = [f"spec={spec}", "set=target", f"store={store}", "mode=finetune", f"source={src_dir}", "epochs=1", "lr=0.01", *SMALL]
    fastft("train", *common, f"out={out}", "name=frozen", "copy=3", "freeze=3")
    fastft("train", *common, f"out={out}", "name=plus", "copy=3")
    (frozen_dir,) = out.glob("frozen-*")
    (plus_dir,) = out.glob("plus-*")
    frozen, plus = weights.read_model(frozen_dir).state, weights.read_model(plus_dir).state
    for i, layer in enumerate(ALEXNET_LAYERS[:7]):
        for k in _weights(src, layer):
            if i < 3:
                assert torch.equal(frozen[k], src[k]), f"{k} was frozen but moved"
                assert not torch.equal(plus[k], src[k]), f"{k} was to fine-tune but did not move"
            else:
                assert not torch.equal(frozen[k], src[k]) and not torch.equal(plus[k], src[k])
    assert json.loads((frozen_dir / "final.json").read_text())["frozen"] == ["conv1", "conv2", "conv3"]
    assert "copied conv1, conv2, conv3 from the source" in (frozen_dir / "train.log").read_text()
    assert json.loads((frozen_dir / "config.json").read_text())["identity"]["copy"] == 3
    r = fastft("train", *common, f"out={out}", "name=wrong", "copy=2", "freeze=4", check=False)
    assert r.returncode and "freeze 4 would keep conv3, conv4 fixed" in r.stderr and not list(out.glob("wrong-*"))
