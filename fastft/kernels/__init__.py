"""Hand-written kernels for the training step (Triton), each with the pure-PyTorch formulation it implements.

A kernel module here owns one fused operation: its Triton kernels (forward and backward), a ``torch.library`` custom
op with its autograd formula (so ``torch.compile`` and CUDA graph capture see one opaque op), and ``reference(...)``,
the same arithmetic in PyTorch ops. On CUDA tensors the op runs the Triton kernels; on CPU tensors it runs them
through Triton's interpreter when ``TRITON_INTERPRET=1`` was set before the module was imported (the CPU tests), and
the reference otherwise. Step variants (:mod:`fastft.train.variants`) put these ops into a model.
"""
