"""Device and precision resolution, in one place: ``auto`` means CUDA when torch sees a GPU, else the CPU; ``auto``
precision means bf16 on CUDA and fp32 on the CPU. torch is imported only when ``auto`` has to be resolved, so
configs that name their device stay torch-free."""
from __future__ import annotations


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve(device: str) -> str:
    """``auto`` → ``cuda`` or ``cpu``; any other name unchanged."""
    return device if device != "auto" else ("cuda" if cuda_available() else "cpu")


def precision_for(precision: str, device: str) -> str:
    """``auto`` → ``bf16`` on CUDA, ``fp32`` elsewhere; any other name unchanged."""
    return precision if precision != "auto" else ("bf16" if device == "cuda" else "fp32")
