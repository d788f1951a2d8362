"""Receptive-field tables computed from the model itself.

What is a receptive field?
--------------------------
One pixel of a feature map "sees" only a square patch of the input image.
The side length of that patch is the pixel's *receptive field* (RF).  A 3x3
convolution on the image gives RF 3; a second 3x3 convolution on top of it
gives RF 5, and so on.  Strided layers (pooling, stride-2 convolutions) make
the RF grow faster afterwards, because neighbouring pixels of the smaller
feature map lie further apart in the input.

The three formulas (the course's "S5 formulas")
-----------------------------------------------
Walk through the network layer by layer.  Every convolution / pooling layer
has a kernel size ``k``, a stride ``s`` and a padding ``p``.  Start with
``n = input size``, ``j = 1`` and ``r = 1`` and apply, for each layer::

    n_out = floor((n_in + 2p - k) / s) + 1     # spatial size of the output
    j_out = j_in * s                           # jump
    r_out = r_in + (k - 1) * j_in              # receptive field

* ``n`` is the height (= width) of the feature map.
* ``j`` (the *jump*) is the distance, measured in input pixels, between two
  neighbouring pixels of the feature map.  Every stride multiplies it.
* ``r`` is the receptive field: the side of the input patch one output pixel
  sees.  A kernel of size ``k`` adds ``k - 1`` neighbours, each ``j_in``
  input pixels apart, so the RF grows by ``(k - 1) * j_in``.

Global / adaptive pooling is treated as a kernel covering the whole input
(``AdaptiveAvgPool2d(1)`` on an ``n x n`` map is ``k = s = n``, ``p = 0``).

Where two paths meet (``x + block(x)`` in a residual network) the output pixel
sees the union of what both paths see, so the table keeps the *largest*
receptive field of the inputs.

How it works
------------
:func:`receptive_field` runs one forward pass with a tensor of zeros and puts
a forward hook on every module.  Each ``nn.Conv2d`` / ``nn.MaxPool2d`` /
``nn.AvgPool2d`` / ``nn.AdaptiveAvgPool2d`` / ``nn.AdaptiveMaxPool2d`` call
adds a row, named like ``model.named_modules()`` (``convblock1.0``; a module
called twice gives ``c`` and ``c#2``).  What happens between those modules
(``F.relu``, batch norm, ``x + block(x)``, ``flatten``) is read from the
autograd graph of the pass: per-pixel operations pass ``(n, j, r)`` on, an
addition takes the largest ``r``, and flattening or ``nn.Linear`` ends the
spatial part.  Anything else that moves pixels -- ``F.max_pool2d`` and other
functional pooling or convolution, ``torch.cat``, ``F.interpolate``, cropping,
transposed convolutions, dilation, ``padding='same'`` -- stops with a
:class:`ReceptiveFieldError` saying what is not handled, never a wrong table.

Example (in a notebook the last line displays the table)::

    table = receptive_field(model, (1, 28, 28))
    table.final_rf          # e.g. 28
    table                   # fixed-width text, also a valid markdown table
"""

from __future__ import annotations

import re
from collections import namedtuple
from typing import Any, Iterator

import torch
from torch import nn

from .modelstate import modes_restored

__all__ = ["receptive_field", "RFTable", "RFRow", "ReceptiveFieldError"]


class ReceptiveFieldError(ValueError):
    """Raised when the model contains something the S5 formulas cannot describe."""


RFRow = namedtuple("RFRow", "layer kind n_in n_out k s p j_in j_out r_in r_out")
RFRow.__doc__ = "One convolution / pooling call of a receptive-field table: its S5 quantities."
_Meta = namedtuple("_Meta", "n j r lost_at", defaults=("",))   # n is None once flattened


class RFTable:
    """The table of :func:`receptive_field`: ``rows`` (one :class:`RFRow` per call, in order) and
    ``final_rf``, the largest RF that reaches the output (``r_out`` of the last row for a plain
    stack, 1 without rows).  ``str``, ``repr`` and ``to_markdown()`` give the same fixed-width
    text, so a notebook cell ending in ``receptive_field(...)`` prints the table.
    """

    def __init__(self, rows: list, input_size: tuple, final_rf: int | None = None) -> None:
        self.rows = list(rows)
        self.input_size = tuple(int(v) for v in input_size)
        self.final_rf = final_rf if final_rf is not None else (self.rows[-1].r_out if self.rows else 1)

    def to_markdown(self) -> str:
        """Fixed-width text table (a valid markdown pipe table) plus a summary line."""
        cols = RFRow._fields                     # "layer" and "kind" left-aligned, numbers right
        body = [[str(v) for v in row] for row in self.rows]
        widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]

        def fmt(cells: list) -> str:
            return "| " + " | ".join(c.rjust(w) if i > 1 else c.ljust(w)
                                     for i, (c, w) in enumerate(zip(cells, widths))) + " |"

        rule = "|" + "|".join("-" * (w + 1) + ":" if i > 1 else ":" + "-" * (w + 1)
                              for i, w in enumerate(widths)) + "|"
        size = " x ".join(str(v) for v in self.input_size[1:])
        last = (f"Final receptive field: {self.final_rf} (input {size})" if self.rows else
                f"No convolution or pooling layers found (input {size}); receptive field 1.")
        return "\n".join([fmt(cols), rule] + [fmt(r) for r in body] + ["", last])

    __str__ = __repr__ = to_markdown


_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# Autograd operations (``ReluBackward0`` -> ``Relu``) that treat every pixel on its own ...
_PER_PIXEL = {"Relu", "Celu", "Elu", "Gelu", "LeakyRelu", "Silu", "Sigmoid", "Tanh", "Add", "Sub", "Mul",
              "Div", "NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm"}
# ... and those that end the spatial part (flatten, nn.Linear, softmax).
_FLATTEN = {"View", "UnsafeView", "Reshape", "ReshapeAlias", "T", "Mm", "Addmm", "LogSoftmax", "Softmax"}


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)


def _error(msg: str) -> ReceptiveFieldError:
    return ReceptiveFieldError(f"receptive_field: {msg}")


class _Tracer:
    """Forward hooks that carry ``(n, j, r)`` from module to module along the autograd graph."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {m: name for name, m in model.named_modules()}
        self.root = type(model).__name__
        self.meta: dict = {}             # autograd node -> _Meta of its tensor (None: not from the input)
        self.rows, self.stack, self.calls = [], [], {}   # table, modules running now, calls per name

    def where(self, module: nn.Module | None) -> str:
        name = self.names.get(module, "")
        return f"layer '{name}' ({type(module).__name__})" if name else f"the forward() of {self.root}"

    def resolve(self, t: torch.Tensor, module: nn.Module | None) -> _Meta | None:
        """``(n, j, r)`` of ``t``; the steps not seen yet ran in the forward() of ``module``."""
        return self._walk(t.grad_fn, module) if t.grad_fn is not None else None

    def _walk(self, node: Any, module: nn.Module | None) -> _Meta | None:
        if node not in self.meta:
            parts = [m for m in (self._walk(nxt, module) for nxt, _ in node.next_functions
                                 if nxt is not None) if m is not None]
            op = re.sub(r"Backward\d*$", "", type(node).__name__)
            self.meta[node] = self._merge(op, parts, self.where(module)) if parts else None
        return self.meta[node]

    @staticmethod
    def _merge(op: str, parts: list, where: str) -> _Meta:
        r, lost = max(m.r for m in parts), [m for m in parts if m.n is None]
        if op in _FLATTEN or len(lost) == len(parts):   # after flattening anything goes
            return _Meta(None, 1, r, lost[0].lost_at if lost else f"'{op}' in {where}")
        if op not in _PER_PIXEL:
            raise _error(f"'{op}' in {where} is not handled: between Conv2d / MaxPool2d / AvgPool2d / "
                         "AdaptiveAvg/MaxPool2d modules only per-pixel operations, additions and "
                         "flattening are (no functional pooling, torch.cat, interpolation, cropping)")
        if lost:
            raise _error(f"'{op}' in {where} combines a feature map with a tensor whose spatial layout "
                         f"was lost at {lost[0].lost_at}; this is not handled")
        for what, values in (("spatial sizes", {m.n for m in parts}), ("jumps", {m.j for m in parts})):
            if len(values) > 1:
                raise _error(f"'{op}' in {where} combines feature maps with different {what} "
                             f"{' and '.join(str(v) for v in sorted(values))}; this is not handled")
        return _Meta(parts[0].n, parts[0].j, r)   # where paths meet: the largest receptive field

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        for t in _tensors(args):
            self.resolve(t, self.stack[-1] if self.stack else None)
        self.stack.append(module)

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.stack.pop()
        if isinstance(module, _MODULES):
            self.add_row(module, next(_tensors(args)), next(_tensors(output)))
        for t in _tensors(output):
            self.resolve(t, module)

    def add_row(self, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        name = self.names.get(module) or "(model)"
        self.calls[name] = count = self.calls.get(name, 0) + 1
        layer, kind = (name if count == 1 else f"{name}#{count}"), type(module).__name__
        label = f"'{layer}' ({kind})"
        meta = self.resolve(x, None)
        if meta is None or meta.n is None or x.dim() != 4 or x.shape[-2:] != (meta.n, meta.n):
            raise _error(f"layer {label} needs a (N, C, H, W) feature map of the input" +
                         (f"; its spatial layout was lost at {meta.lost_at}" if meta else ""))

        def square(attr: str) -> int:
            value = getattr(module, attr, 1)
            values = {meta.n if v is None else v for v in (value if isinstance(value, tuple) else [value])}
            if len(values) > 1 or isinstance(value, str):
                raise _error(f"layer {label} has {attr} {value!r}; only square kernels, strides and "
                             "numeric paddings are handled")
            return int(values.pop())

        n, d = meta.n, square("dilation")
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            o = square("output_size")
            if n % o:
                raise _error(f"layer {label} pools {n} x {n} down to {o} x {o}; {n} is not divisible "
                             f"by {o}, so the windows are not a regular sliding window")
            k, s, p = n - (o - 1) * (n // o), n // o, 0
        else:
            k, s, p = square("kernel_size"), square("stride"), square("padding")
        if d != 1 or getattr(module, "ceil_mode", False):
            raise _error(f"layer {label} uses {'ceil_mode' if d == 1 else f'dilation {d}'}; "
                         "this is not handled")
        n_out = (n + 2 * p - k) // s + 1
        if out.shape[-2:] != (n_out, n_out):
            raise _error(f"layer {label}: the formulas give n_out = {n_out} but PyTorch produced "
                         f"{tuple(out.shape[-2:])}")
        row = RFRow(layer, kind, n, n_out, k, s, p, meta.j, meta.j * s, meta.r, meta.r + (k - 1) * meta.j)
        self.rows.append(row)
        self.meta[out.grad_fn] = _Meta(n_out, row.j_out, row.r_out)


def receptive_field(model: nn.Module, input_size: tuple[int, int, int]) -> RFTable:
    """Compute the receptive-field table of ``model`` for one ``(C, H, W)`` input.

    The model runs once on ``torch.zeros(1, *input_size)`` in eval mode; every ``Conv2d`` /
    ``MaxPool2d`` / ``AvgPool2d`` / ``AdaptiveAvg/MaxPool2d`` module call becomes a row with
    ``n_in, n_out, k, s, p, j_in, j_out, r_in, r_out``.  Training flags are restored; no
    parameter, gradient or buffer changes.  Raises :class:`ReceptiveFieldError` (a
    ``ValueError``) for a non-square input or layer and anything the formulas do not handle.
    """
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or size[1] != size[2]:
        raise _error(f"input_size must be a square (C, H, W), got {tuple(input_size)}")
    param = next((t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), None)
    x = torch.zeros((1, *size), device=getattr(param, "device", None), dtype=getattr(param, "dtype", None),
                    requires_grad=True).clone()
    tracer = _Tracer(model)
    tracer.meta[x.grad_fn] = _Meta(size[1], 1, 1)
    handles = []
    try:
        for module in tracer.names:
            handles += [module.register_forward_pre_hook(tracer.pre_hook),
                        module.register_forward_hook(tracer.post_hook)]
        with modes_restored(model, train=False), torch.enable_grad():
            metas = [tracer.resolve(t, model) for t in _tensors(model(x))]
    finally:
        for handle in handles:
            handle.remove()
    final = [m.r for m in metas if m is not None]
    return RFTable(tracer.rows, size, max(final) if final else None)
