"""fastft: pretrain → fine-tune studies on ImageNet subsets chosen through WordNet, at the speed of the GPU.

The flow, one module each: taxonomy → subsets → store (shards, views) → pipelines → model → trainer → sweep → report
(+ analysis). Data modules never import the trainer; the trainer never imports DALI (it receives a loader).
"""
__version__ = "0.1.0"

# public names, imported on first use so that `import fastft` stays light (no torch)
_LAZY = {"ViewDataset": "fastft.loading.dataset", "load_model": "fastft.inference", "LoadedModel": "fastft.inference"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastft' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
