"""The hot path: one SGD step (eager, compiled, or replayed as a CUDA graph), shared by the trainer and ``fastft
bench``, and evaluation (each sample counted exactly once across ranks)."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def cuda_autocast(bf16: bool):
    """bf16 autocast for steps that may be captured as a CUDA graph: without the weight-cast cache, which capture needs."""
    return lambda: torch.autocast("cuda", torch.bfloat16, enabled=bf16, cache_enabled=False)


class Step:
    """One SGD step — the hot path, shared by the trainer and ``fastft bench``. No host synchronisation.

    * ``compile``: ``torch.compile`` of the model (fuses LRN, ReLU, pooling and the bf16 casts).
    * ``graph`` (CUDA, one process): after ``warmup`` eager steps (run on a side stream, so cuDNN autotuning and lazy
      initialisation stay out of the capture) the whole step — forward, loss, backward and the optimiser update — is
      captured once as a CUDA graph and replayed for every batch: one launch per step instead of ~200 kernel launches
      and their Python overhead. Batches are copied into the graph's static input buffers (a device-to-device copy).
      The learning rate is a constant inside the graph, so the step is re-captured when it changes (every
      ``lr_step`` epochs). Warm-up steps are real training steps; the update is the same arithmetic either way.

    ``__call__(x, y)`` returns the step's loss as a device tensor (with ``graph``, the same static tensor each time:
    consume it before the next call, as the trainer does by accumulating it).
    """

    def __init__(self, model, opt, *, autocast, backward=None, channels_last: bool = False, compile: bool = False,
                 graph: bool = False, warmup: int = 3):
        self.model, self.opt, self.autocast = model, opt, autocast
        self.backward = backward or (lambda loss: loss.backward())
        self.channels_last, self.graph, self.warmup = channels_last, graph, warmup
        self.fwd = torch.compile(model) if compile else model
        self._g = None
        self._lr = None
        self._seen = 0
        self.capture_s = 0.0  # seconds spent capturing CUDA graphs (a fixed cost of the run)

    def _body(self, x, y):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            loss = F.cross_entropy(self.fwd(x), y)
        self.backward(loss)
        self.opt.step()
        return loss.detach()  # no reference to the autograd graph outlives the step (side-stream warm-up, capture)

    def _eager(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        return self._body(x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.graph:
            return self._eager(x, y)
        lr = tuple(g["lr"] for g in self.opt.param_groups)
        if self._g is None or lr != self._lr or x.shape != self._x.shape:
            if self._seen < self.warmup:
                self._seen += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    loss = self._eager(x, y)
                torch.cuda.current_stream().wait_stream(side)
                return loss
            self._capture(x, y, lr)
        self._x.copy_(x)
        self._y.copy_(y)
        self._g.replay()
        return self._loss

    def _capture(self, x, y, lr) -> None:
        t0 = time.perf_counter()
        self._g = None  # release the previous graph (and its memory pool) first
        torch.cuda.synchronize()
        self._x, self._y = x.clone(), y.clone()
        self.opt.zero_grad(set_to_none=True)  # the captured backward allocates the gradients, then overwrites them
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, capture_error_mode="thread_local"):  # DALI keeps decoding on its own threads
            self._loss = self._body(self._x, self._y)
        self._g, self._lr = g, lr
        torch.cuda.synchronize()
        self.capture_s += time.perf_counter() - t0


def in_sync(acc, model) -> bool:
    """Whether every rank holds the same weights (DDP keeps replicas equal; a desync silently ruins a run)."""
    with torch.no_grad():
        v = torch.stack([p.detach().double().sum() for p in acc.unwrap_model(model).parameters()]).to(acc.device)
    allv = acc.gather(v.view(1, -1))
    return bool((allv == allv[0]).all().item())


@torch.no_grad()
def evaluate(acc, model, loader, device: str, channels_last: bool) -> dict:
    """Top-1/top-5 over the split, each sample counted exactly once across ranks (padding has weight 0)."""
    model.eval()
    tot = torch.zeros(4, device=acc.device, dtype=torch.float64)  # correct1, correct5, count, loss
    for x, y, w in loader.epoch(0):
        if device == "cuda" and channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with acc.autocast():
            logits = model(x)
        w = w.to(acc.device, torch.float64)
        top5 = logits.float().topk(min(5, logits.shape[1]), 1).indices
        hit = top5.eq(y.view(-1, 1))
        tot[0] += (hit[:, 0].double() * w).sum()
        tot[1] += (hit.any(1).double() * w).sum()
        tot[2] += w.sum()
        tot[3] += (F.cross_entropy(logits.float(), y, reduction="none").double() * w).sum()
    tot = acc.reduce(tot, "sum")
    model.train()
    n = tot[2].item()
    return {"top1": 100 * tot[0].item() / n, "top5": 100 * tot[1].item() / n, "test_loss": tot[3].item() / n, "test_n": int(n)}
