"""How big and how expensive is a model?

Three questions a student should be able to answer about any network:

* **How many parameters does it have?** -> :func:`count_params`.  Every weight
  and bias is one learnable number; a 3x3 convolution from ``C_in`` to
  ``C_out`` channels has ``C_out * C_in * 3 * 3`` weights plus ``C_out``
  biases.
* **What shape does the tensor have after each layer?** -> :func:`model_summary`,
  a thin wrapper around ``torchsummary.summary`` that works on CPU and leaves the
  model exactly as it found it.
* **How much arithmetic does one image cost?** -> :func:`model_cost`, which
  counts multiply-accumulate operations (MACs) of the convolution and linear
  layers.  One MAC is ``a += w * x``; a convolution output pixel costs
  ``C_in/groups * k_h * k_w`` MACs, so a layer costs that times the number of
  output values.  Parameters tell you the memory, MACs tell you the compute:
  the same 3x3 kernel is reused at every pixel, so a conv layer on a large
  image can be cheap in parameters but expensive in MACs.

Printed text is deterministic (no memory addresses, no timings), so notebook
cells that print summaries can be checked verbatim.
"""

from __future__ import annotations

import contextlib
import io
from typing import Iterator, Sequence, Union

import torch
from torch import nn

from .modelstate import model_device, modes_restored

__all__ = ["count_params", "model_summary", "model_cost", "SummaryText"]

InputSize = Union[Sequence[int], Sequence[Sequence[int]]]


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of learnable numbers in ``model``.

    ``trainable_only=True`` counts parameters with ``requires_grad=True`` (what
    the optimizer will update); ``False`` also counts frozen ones.  Shared
    parameters are counted once, and buffers such as BatchNorm's running
    mean/var are *not* parameters (they are statistics, not learned by
    gradient descent), so they are not counted.
    """
    return sum(
        p.numel() for p in model.parameters() if p.requires_grad or not trainable_only
    )


class SummaryText(str):
    """A ``str`` that has already been printed.

    :func:`model_summary` prints its table and returns it as a ``SummaryText``.
    It behaves like any string (``"Total params" in text``, ``print(text)``),
    but when it is the last expression of a Jupyter cell it is not echoed a
    second time as ``Out[n]: '----...\\n...'``.
    """

    __slots__ = ()

    def _ipython_display_(self) -> None:  # IPython hook: the text is already shown
        return None


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _probing(model: nn.Module, device: torch.device | str | None = None) -> Iterator[None]:
    """Temporarily put ``model`` in eval mode (optionally on ``device``), without gradients.

    Eval mode matters: a forward pass in train mode would update BatchNorm
    running statistics with the random probe input and make Dropout random.
    On exit every sub-module gets back its own training flag and the model
    goes back to its original device, even if an exception was raised.
    """
    original_device = model_device(model)
    try:
        if device is not None:
            model.to(device)
        with modes_restored(model, train=False), torch.no_grad():
            yield
    finally:
        if device is not None:
            model.to(original_device)


def _normalise_input_size(input_size: InputSize):
    """(1, 28, 28) or [1, 28, 28] -> (1, 28, 28); [(1,28,28), (3,8)] -> list of tuples."""
    if len(input_size) > 0 and all(isinstance(s, int) for s in input_size):
        return tuple(int(s) for s in input_size)
    return [tuple(int(d) for d in s) for s in input_size]


# --------------------------------------------------------------------------- summary
def model_summary(model: nn.Module, input_size: InputSize, device: str | torch.device = "cpu") -> SummaryText:
    """Print a layer-by-layer table (output shape, #params) and return it.

    ``input_size`` is the shape of ONE sample without the batch dimension, e.g.
    ``(1, 28, 28)`` for MNIST or ``(3, 32, 32)`` for CIFAR-10 (a list of such
    tuples for a model with several inputs).  In the table the batch dimension
    is shown as ``-1`` ("any batch size").

    Uses ``torchsummary.summary``, which pushes a random batch of 2 through the
    model and records every layer with forward hooks.  Its own default
    ``device="cuda"`` fails on a CPU-only machine, so this wrapper passes the
    device explicitly, moves the model there for the probe and back afterwards,
    runs the probe in eval mode under ``torch.no_grad()`` (BatchNorm running
    statistics are not touched) and restores every module's training flag.
    The global random number generator is also left untouched, so calling the
    summary does not change the results of a seeded training run.

    Limits of torchsummary worth knowing: it only counts parameters named
    ``weight`` and ``bias`` of modules that run in the forward pass, and a
    module used twice is listed (and counted) twice.  :func:`count_params` is
    the ground truth.

    Returns a :class:`SummaryText` (a ``str``) that is identical from call to
    call; in a notebook it is printed once, not echoed again.
    """
    from torchsummary import summary as _ts_summary  # local import: optional dependency

    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"torchsummary only supports 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available; use device='cpu'")

    size = _normalise_input_size(input_size)
    buf = io.StringIO()
    with _probing(model, dev), torch.random.fork_rng(devices=[]):
        with contextlib.redirect_stdout(buf):
            _ts_summary(model, size, device=dev.type)
    text = SummaryText(buf.getvalue())
    print(text, end="")
    return text


# --------------------------------------------------------------------------- MACs
def _layer_macs(module: nn.Module, inputs, output: torch.Tensor) -> int:
    """Multiply-accumulates of one call of a conv / linear layer (batch included)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # every INPUT value is multiplied into a k x k patch of C_out/groups outputs
        x = inputs[0]
        per_in = (module.out_channels // module.groups) * _prod(module.kernel_size)
        return x.numel() * per_in
    if isinstance(module, nn.modules.conv._ConvNd):
        # every OUTPUT value is a dot product of length C_in/groups * k_h * k_w
        per_out = (module.in_channels // module.groups) * _prod(module.kernel_size)
        return output.numel() * per_out
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def model_cost(model: nn.Module, input_size: InputSize) -> dict:
    """Parameters and MACs needed to process ONE image of shape ``input_size``.

    Returns ``{"params": total parameters, "trainable_params": ..., "macs": ...}``.

    MACs are counted exactly with forward hooks on ``Conv*d``,
    ``ConvTranspose*d`` and ``Linear`` layers (bias additions, BatchNorm,
    pooling and activations are cheap and not counted - this is the number
    papers usually quote as "MACs"; FLOPs are roughly ``2 * MACs``).  A
    depthwise convolution (``groups == C_in``) is ``C_in`` times cheaper than a
    normal one, which is why MobileNet-style networks use it.

    The probe input is all zeros (the count does not depend on the values),
    batch size 1, on the model's device, in eval mode under ``no_grad``; the
    model's training flags are restored afterwards.

    Why not ``torchscan``?  Its report format changed completely between 0.1
    and 0.2, and 0.2.0 counts a ``MaxPool2d(2)`` as ``out * (2 - 1)`` instead of
    ``out * (2*2 - 1)`` comparisons when ``kernel_size`` is an int.  For
    conv/linear layers the counts agree (the tests check this).
    """
    size = _normalise_input_size(input_size)
    sizes = [size] if isinstance(size, tuple) else size
    device = model_device(model)
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += _layer_macs(module, inputs, output)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    try:
        with _probing(model):
            xs = [torch.zeros(1, *s, device=device, dtype=dtype) for s in sizes]
            model(*xs)
    finally:
        for h in handles:
            h.remove()

    return {
        "params": count_params(model, trainable_only=False),
        "trainable_params": count_params(model, trainable_only=True),
        "macs": int(total),
    }
