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

A dilated kernel (dilation ``d``) behaves like an ordinary kernel of the
*effective* size ``k_eff = d * (k - 1) + 1``; the formulas then use
``k_eff`` in place of ``k``.  Global / adaptive pooling is treated as a
kernel covering the whole input (``AdaptiveAvgPool2d(1)`` on an ``n x n`` map
is ``k = s = n``, ``p = 0``).

Where two paths meet (``x + block(x)`` in a residual network, ``torch.cat``)
the output pixel sees the union of what both paths see, so the table keeps
the *largest* receptive field of the inputs.

How it works
------------
:func:`receptive_field` runs one forward pass with a tensor of zeros and
watches every torch operation (via :class:`torch.overrides.TorchFunctionMode`).
Each tensor derived from the input carries its ``(n, j, r)``; convolution and
pooling calls add a row to the table, element-wise and shape-preserving
operations pass the numbers on, and operations whose effect on the spatial
grid cannot be described by the formulas (``F.interpolate``, cropping,
transposed convolutions, ...) stop with a clear error.  Flattening the
feature map (``x.view(B, -1)``, ``nn.Flatten``) simply ends the spatial part;
``nn.Linear`` layers after it get no rows.

Rows of layers called as modules are named like ``model.named_modules()``
(``convblock1.0``); functional calls are numbered by position
(``F.max_pool2d#1``, or ``block1:F.max_pool2d#1`` inside a sub-module).

Example (in a notebook the last line displays the table)::

    table = receptive_field(model, (1, 28, 28))
    table.final_rf          # e.g. 28
    table                   # fixed-width text, also a valid markdown table
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["receptive_field", "RFTable", "RFRow", "ReceptiveFieldError"]


class ReceptiveFieldError(ValueError):
    """Raised when the model contains something the S5 formulas cannot describe."""


@dataclass(frozen=True)
class RFRow:
    """One convolution / pooling layer of a receptive-field table.

    ``k`` is the kernel size as written in the layer and ``d`` its dilation;
    the formulas use the effective kernel ``k_eff = d * (k - 1) + 1``
    (equal to ``k`` when ``d == 1``).
    """

    layer: str
    kind: str
    n_in: int
    n_out: int
    k: int
    s: int
    p: int
    j_in: int
    j_out: int
    r_in: int
    r_out: int
    d: int = 1

    @property
    def k_eff(self) -> int:
        """Effective kernel size ``d * (k - 1) + 1``."""
        return self.d * (self.k - 1) + 1


_COLUMNS = ("layer", "kind", "n_in", "n_out", "k", "d", "s", "p",
            "j_in", "j_out", "r_in", "r_out")


class RFTable:
    """The receptive-field table returned by :func:`receptive_field`.

    Attributes
    ----------
    rows : list[RFRow]
        One row per convolution / pooling call, in the order they ran.
    input_size : tuple[int, ...]
        The ``(C, H, W)`` the table was computed for.

    ``str(table)``, ``repr(table)`` and ``table.to_markdown()`` all give the
    same deterministic fixed-width text, so a notebook cell that ends with
    ``receptive_field(model, (1, 28, 28))`` prints the table.
    """

    def __init__(self, rows: list[RFRow], input_size: tuple[int, ...],
                 final_rf: int | None = None) -> None:
        self.rows = list(rows)
        self.input_size = tuple(int(v) for v in input_size)
        self._final_rf = final_rf

    @property
    def final_rf(self) -> int:
        """Receptive field of the model's output.

        For a plain stack of layers this is ``r_out`` of the last row.  When
        the network ends in a merge (e.g. ``x + block(x)`` whose last row is
        the 1x1 shortcut conv) it is the largest RF that reaches the output.
        A model without convolution / pooling layers has RF 1.
        """
        if self._final_rf is not None:
            return self._final_rf
        return self.rows[-1].r_out if self.rows else 1

    def as_dicts(self) -> list[dict[str, Any]]:
        """The rows as a list of plain dicts (e.g. for ``pandas.DataFrame``)."""
        return [dataclasses.asdict(row) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[RFRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> RFRow:
        return self.rows[index]

    def to_markdown(self) -> str:
        """Fixed-width text table (a valid markdown pipe table) plus a summary line.

        The ``d`` (dilation) column is shown only when some layer is dilated.
        """
        show_d = any(row.d != 1 for row in self.rows)
        columns = [c for c in _COLUMNS if show_d or c != "d"]
        body = [[str(getattr(row, c)) for c in columns] for row in self.rows]
        widths = [max([len(c)] + [len(r[i]) for r in body])
                  for i, c in enumerate(columns)]
        numeric = [c not in ("layer", "kind") for c in columns]

        def fmt(cells: list[str]) -> str:
            parts = [cell.rjust(w) if num else cell.ljust(w)
                     for cell, w, num in zip(cells, widths, numeric)]
            return "| " + " | ".join(parts) + " |"

        rule = "|" + "|".join(("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1))
                              for w, num in zip(widths, numeric)) + "|"
        lines = [fmt(list(columns)), rule] + [fmt(r) for r in body]
        size = " x ".join(str(v) for v in self.input_size[1:])
        if self.rows:
            lines.append("")
            lines.append(f"Final receptive field: {self.final_rf} (input {size})")
        else:
            lines.append("")
            lines.append(f"No convolution or pooling layers found (input {size}); "
                         "receptive field 1.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def __repr__(self) -> str:
        return self.to_markdown()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("RFTable(...)" if cycle else self.to_markdown())


# --------------------------------------------------------------------------
# Internal bookkeeping
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Meta:
    """Spatial state of a 4-D feature map: size, jump, receptive field.

    ``pad`` is padding added by an explicit ``F.pad`` (e.g. from
    ``padding_mode='reflect'``) that has not yet been consumed by a conv/pool;
    ``n`` already includes it.
    """

    n: int
    j: int
    r: int
    pad: int = 0


@dataclass(frozen=True)
class _Lost:
    """A tensor derived from the input after its spatial grid was flattened.

    ``r`` is the receptive field just before flattening (what the table
    reports); ``r_all`` is the RF of the whole flattened map (``r + (n-1)*j``),
    used when such a tensor is broadcast back onto a feature map, e.g. the
    channel weights of a squeeze-and-excitation block.
    """

    op: str
    where: str
    r: int
    r_all: int


_CONV = "conv2d"
_MAXPOOL = "max_pool2d"
_AVGPOOL = "avg_pool2d"
_ADAPTIVE_AVG = "adaptive_avg_pool2d"
_ADAPTIVE_MAX = "adaptive_max_pool2d"

# Positional parameter names of the functional forms (torch and F agree).
_PARAMS = {
    _CONV: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    _MAXPOOL: ("input", "kernel_size", "stride", "padding", "dilation",
               "ceil_mode", "return_indices"),
    _AVGPOOL: ("input", "kernel_size", "stride", "padding", "ceil_mode",
               "count_include_pad", "divisor_override"),
    _ADAPTIVE_AVG: ("input", "output_size"),
    _ADAPTIVE_MAX: ("input", "output_size", "return_indices"),
}

_SPATIAL_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d,
                    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

# Spatial operations we refuse outright (only 2-D layers are supported).
_UNSUPPORTED = {
    "conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool1d", "max_pool3d", "avg_pool1d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool3d",
    "lp_pool1d", "lp_pool2d", "lp_pool3d",
    "fractional_max_pool2d", "fractional_max_pool3d",
    "max_unpool1d", "max_unpool2d", "max_unpool3d",
}

# Reductions that act as global pooling when they reduce both spatial dims.
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "nanmean", "nansum"}

# Operations whose outputs are new constants, not functions of the input.
_FACTORIES = {"new_zeros", "new_ones", "new_empty", "new_full", "new_tensor",
              "zeros_like", "ones_like", "empty_like", "full_like",
              "rand_like", "randn_like", "randint_like"}


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # attribute access such as ``x.shape`` / ``x.T``
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    return name


def _normalize(name: str) -> str:
    base = name.lstrip("_")
    if base.endswith("_with_indices"):
        base = base[: -len("_with_indices")]
    return base


def _iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _iter_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _iter_tensors(item)


def _out_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """``floor((n + 2p - k) / s) + 1`` (PyTorch's rule when ``ceil_mode``)."""
    span = n + 2 * p - k
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= n + p:  # last window must start inside the input
        out -= 1
    return out


class _RFMode(TorchFunctionMode):
    """Follows (n, j, r) through every torch call of one forward pass."""

    def __init__(self, root_name: str) -> None:
        super().__init__()
        self.rows: list[RFRow] = []
        self.stack: list[tuple[str, nn.Module]] = []
        self.root_name = root_name
        self._meta: dict[int, tuple[weakref.ref, _Meta | _Lost]] = {}
        self._label_counts: dict[str, int] = {}

    # -- tensor metadata ---------------------------------------------------
    def get(self, t: torch.Tensor) -> _Meta | _Lost | None:
        entry = self._meta.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return None

    def set(self, t: torch.Tensor, meta: _Meta | _Lost) -> None:
        self._meta[id(t)] = (weakref.ref(t), meta)

    # -- naming ------------------------------------------------------------
    def where(self) -> str:
        if self.stack and self.stack[-1][0]:
            return f"layer '{self.stack[-1][0]}'"
        return f"the forward() of {self.root_name}"

    def _count(self, label: str) -> int:
        self._label_counts[label] = self._label_counts.get(label, 0) + 1
        return self._label_counts[label]

    def label(self, op: str, functional_prefix: str) -> tuple[str, str]:
        """Row label and kind for a conv/pool/reduction call."""
        if self.stack and isinstance(self.stack[-1][1], _SPATIAL_MODULES):
            name, module = self.stack[-1]
            name = name or "(model)"
            count = self._count(name)
            return (name if count == 1 else f"{name}#{count}"), type(module).__name__
        owner = self.stack[-1][0] if self.stack else ""
        kind = functional_prefix + op
        key = f"{owner}:{kind}" if owner else kind
        return f"{key}#{self._count(key)}", kind

    def error(self, msg: str) -> ReceptiveFieldError:
        return ReceptiveFieldError(f"receptive_field: {msg}")

    # -- the hook into every torch call -----------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [(t, m) for t, m in ((t, self.get(t)) for t in _iter_tensors((args, kwargs)))
                  if m is not None]
        if not inputs:
            return func(*args, **kwargs)
        name = _op_name(func)
        base = _normalize(name)
        if base in _UNSUPPORTED:
            raise NotImplementedError(
                f"receptive_field: cannot reason about '{name}' in {self.where()}: "
                "only 2-D convolution and pooling (Conv2d, MaxPool2d, AvgPool2d, "
                "AdaptiveAvg/MaxPool2d) are supported")
        if base in _PARAMS:
            bound = dict(zip(_PARAMS[base], args))
            bound.update(kwargs)
            x = bound.get("input")
            if isinstance(x, torch.Tensor) and self.get(x) is not None:
                return self._spatial(func, base, bound, args, kwargs)
        if base == "pad":
            return self._pad(func, args, kwargs)
        out = func(*args, **kwargs)
        if name in _FACTORIES:
            return out
        if base in _REDUCTIONS and self._maybe_global_reduction(name, args, kwargs, out):
            return out
        self._propagate(name, inputs, out)
        return out

    # -- convolution and pooling -------------------------------------------
    def _square(self, value: Any, what: str, label: str, kind: str) -> int:
        if isinstance(value, torch.Size):
            value = tuple(value)
        if isinstance(value, (list, tuple)):
            vals = [int(v) for v in value]
            if len(set(vals)) > 1:
                raise self.error(
                    f"layer '{label}' ({kind}) has a non-square {what} {tuple(vals)}; "
                    "only square kernels, strides, paddings and dilations are supported")
            return vals[0]
        return int(value)

    def _spatial(self, func, base, bound, args, kwargs):
        x = bound["input"]
        meta = self.get(x)
        prefix = "F."
        label, kind = self.label(base, prefix)
        if isinstance(meta, _Lost):
            raise self.error(
                f"layer '{label}' ({kind}) receives a tensor whose spatial layout was "
                f"lost at '{meta.op}' in {meta.where}")
        if x.dim() != 4:
            raise self.error(f"layer '{label}' ({kind}) needs a 4-D (N, C, H, W) "
                             f"input, got shape {tuple(x.shape)}")

        d, ceil_mode, adaptive = 1, False, False
        if base == _CONV:
            kh, kw = bound["weight"].shape[-2:]
            k = self._square((kh, kw), "kernel", label, kind)
            s = self._square(bound.get("stride", 1), "stride", label, kind)
            d = self._square(bound.get("dilation", 1), "dilation", label, kind)
            padding = bound.get("padding", 0)
            if isinstance(padding, str):
                if padding == "valid":
                    p = 0
                elif padding == "same":
                    k_eff = d * (k - 1) + 1
                    if k_eff % 2 == 0:
                        raise self.error(
                            f"layer '{label}' ({kind}) uses padding='same' with an even "
                            f"effective kernel {k_eff}; PyTorch then pads unevenly, "
                            "which the S5 formulas (symmetric padding) cannot describe")
                    p = (k_eff - 1) // 2
                else:
                    raise self.error(f"layer '{label}' ({kind}) has unknown padding "
                                     f"{padding!r}")
            else:
                p = self._square(padding, "padding", label, kind)
        elif base in (_MAXPOOL, _AVGPOOL):
            k = self._square(bound["kernel_size"], "kernel", label, kind)
            stride = bound.get("stride")
            s = k if stride is None or (isinstance(stride, (list, tuple)) and
                                        len(stride) == 0) else \
                self._square(stride, "stride", label, kind)
            p = self._square(bound.get("padding", 0), "padding", label, kind)
            if base == _MAXPOOL:
                d = self._square(bound.get("dilation", 1), "dilation", label, kind)
            ceil_mode = bool(bound.get("ceil_mode", False))
        else:  # adaptive pooling: a regular window only if sizes divide evenly
            adaptive = True
            n = meta.n
            size = bound["output_size"]
            if isinstance(size, (list, tuple, torch.Size)):
                size = [n if v is None else v for v in size]
            o = self._square(size, "output size", label, kind)
            if o <= 0 or n % o != 0:
                raise self.error(
                    f"layer '{label}' ({kind}) pools {n} x {n} down to {o} x {o}; "
                    f"{n} is not divisible by {o}, so the windows are not a regular "
                    "sliding window and the S5 formulas do not apply")
            s = n // o
            k = n - (o - 1) * s
            p = 0

        # Padding added earlier by F.pad (padding_mode='reflect' etc.) belongs
        # to this layer: report the unpadded size and the total padding.
        if adaptive:
            n_in = meta.n
        else:
            n_in = meta.n - 2 * meta.pad
            p += meta.pad
        k_eff = d * (k - 1) + 1
        n_out = _out_size(n_in, k_eff, s, p, ceil_mode)

        out = func(*args, **kwargs)
        outs = [t for t in _iter_tensors(out) if t.dim() == 4]
        if not outs or tuple(outs[0].shape[-2:]) != (n_out, n_out):
            got = tuple(outs[0].shape[-2:]) if outs else None
            raise self.error(f"layer '{label}' ({kind}): the formulas give n_out = "
                             f"{n_out} but PyTorch produced spatial size {got}")
        j_out = meta.j * s
        r_out = meta.r + (k_eff - 1) * meta.j
        self.rows.append(RFRow(layer=label, kind=kind, n_in=n_in, n_out=n_out, k=k,
                               s=s, p=p, j_in=meta.j, j_out=j_out, r_in=meta.r,
                               r_out=r_out, d=d))
        for t in outs:  # the output (and the indices of max pooling)
            self.set(t, _Meta(n_out, j_out, r_out))
        return out

    def _pad(self, func, args, kwargs):
        """``F.pad`` (used by ``padding_mode='reflect'``): remember the padding.

        The next conv/pool row reports the unpadded ``n_in`` and adds this
        padding to its ``p``, so the row reads like a normally padded layer.
        """
        bound = dict(zip(("input", "pad", "mode", "value"), args))
        bound.update(kwargs)
        x, pads = bound.get("input"), bound.get("pad")
        meta = self.get(x) if isinstance(x, torch.Tensor) else None
        out = func(*args, **kwargs)
        if not isinstance(meta, _Meta) or x.dim() != 4:
            self._propagate("pad", [(t, m) for t, m in ((t, self.get(t)) for t in
                                                       _iter_tensors((args, kwargs)))
                                    if m is not None], out)
            return out
        pads = [int(v) for v in pads]
        spatial = (pads + [0, 0, 0, 0])[:4]
        if len(set(spatial)) != 1 or spatial[0] < 0:
            raise self.error(
                f"cannot reason about 'pad' in {self.where()}: padding "
                f"{tuple(spatial)} (left, right, top, bottom) is not the same on all "
                "four sides")
        p = spatial[0]
        self.set(out, _Meta(meta.n + 2 * p, meta.j, meta.r, meta.pad + p))
        return out

    def _maybe_global_reduction(self, name, args, kwargs, out) -> bool:
        """``x.mean((2, 3))`` and friends: a global pooling row."""
        if not args or not isinstance(args[0], torch.Tensor):
            return False
        x = args[0]
        meta = self.get(x)
        if not isinstance(meta, _Meta) or x.dim() != 4:
            return False
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if isinstance(dim, torch.Tensor) or isinstance(dim, str):
            return False
        if dim is None:  # only an explicit dim=(2, 3) counts as global pooling
            return False
        dims = {int(v) % 4 for v in (dim if isinstance(dim, (list, tuple)) else [dim])}
        if not {2, 3} <= dims:
            return False
        label, kind = self.label(name, "")
        n = meta.n
        row = RFRow(layer=label, kind=kind, n_in=n, n_out=1, k=n, s=n, p=0,
                    j_in=meta.j, j_out=meta.j * n, r_in=meta.r,
                    r_out=meta.r + (n - 1) * meta.j)
        self.rows.append(row)
        for t in _iter_tensors(out):
            if t.dim() == 4 and tuple(t.shape[-2:]) == (1, 1):
                self.set(t, _Meta(1, row.j_out, row.r_out))
            else:
                self.set(t, _Lost(name, self.where(), row.r_out, row.r_out))
        return True

    # -- everything else ---------------------------------------------------
    def _propagate(self, name, inputs, out) -> None:
        """Pass (n, j, r) on through an op that is not conv/pool/pad.

        ``inputs`` are the (tensor, metadata) pairs of the tracked inputs.
        """
        outs = list(_iter_tensors(out))
        if not outs:
            return
        tracked = [m for _, m in inputs if isinstance(m, _Meta)]
        lost = [(t, m) for t, m in inputs if isinstance(m, _Lost)]
        r_max = max(m.r for _, m in inputs)
        r_all = max(m.r_all if isinstance(m, _Lost) else m.r + (m.n - 1) * m.j
                    for _, m in inputs)
        for t in outs:
            if t.dim() != 4 or not tracked:
                # Spatial tracking ends here (flatten, view, linear, ...).
                if tracked or len(lost) > 1:
                    self.set(t, _Lost(name, self.where(), r_max, r_all))
                else:
                    self.set(t, lost[0][1])
                continue
            h, w = (int(v) for v in t.shape[-2:])
            sizes = sorted({m.n for m in tracked})
            if h != w or h not in sizes:
                before = " / ".join(str(v) for v in sizes)
                after = str(h) if h == w else f"{h} x {w}"
                raise self.error(
                    f"cannot reason about '{name}' in {self.where()} "
                    f"(changes spatial size {before} -> {after})")
            # A flattened tensor may come back only as a (N, C, 1, 1) map that
            # is broadcast over every position (squeeze-and-excitation).
            for lt, lm in lost:
                if lt.dim() != 4 or tuple(lt.shape[-2:]) != (1, 1):
                    raise self.error(
                        f"cannot reason about '{name}' in {self.where()}: it combines "
                        f"a feature map with a tensor whose spatial layout was lost at "
                        f"'{lm.op}' in {lm.where}")
            same = [m for m in tracked if m.n == h]
            other = [m for m in tracked if m.n != h and m.n != 1]
            if other:
                raise self.error(
                    f"'{name}' in {self.where()} combines feature maps of different "
                    f"spatial sizes {' and '.join(str(v) for v in sizes)}")
            jumps = sorted({m.j for m in same})
            if len(jumps) > 1:
                raise self.error(
                    f"'{name}' in {self.where()} combines feature maps of size {h} "
                    f"with different jumps {' and '.join(str(v) for v in jumps)}")
            pads = {m.pad for m in same}
            pad = pads.pop() if len(pads) == 1 else 0
            # Several paths meet: report the largest receptive field.
            r = max([m.r for m in tracked] + [lm.r_all for _, lm in lost])
            self.set(t, _Meta(h, jumps[0], r, pad))


def _make_hooks(mode: _RFMode, name: str):
    def pre_hook(module, args):
        mode.stack.append((name, module))

    def post_hook(module, args, output):
        if mode.stack and mode.stack[-1][1] is module:
            mode.stack.pop()

    return pre_hook, post_hook


def receptive_field(model: nn.Module, input_size: tuple[int, int, int]) -> RFTable:
    """Compute the receptive-field table of ``model`` for one ``(C, H, W)`` input.

    The model is run once on ``torch.zeros(1, *input_size)`` in eval mode
    under ``torch.no_grad()``; every ``Conv2d`` / ``MaxPool2d`` /
    ``AvgPool2d`` / ``AdaptiveAvg/MaxPool2d`` (or its ``F.*`` form) becomes a
    row with the S5 quantities ``n_in, n_out, k, s, p, j_in, j_out, r_in,
    r_out``.  The training flags of all modules are restored afterwards and
    no parameter or buffer changes.

    Parameters
    ----------
    model : nn.Module
        Any model whose spatial part uses square 2-D kernels.
    input_size : tuple
        ``(C, H, W)`` with ``H == W``, e.g. ``(1, 28, 28)`` or ``(3, 32, 32)``.

    Raises
    ------
    ReceptiveFieldError (a ValueError)
        For non-square kernels/strides/inputs, uneven adaptive pooling, or
        operations that change the spatial size in a way the formulas cannot
        describe (``F.interpolate``, cropping, ...).
    NotImplementedError
        For 1-D / 3-D / transposed convolutions and pooling.
    """
    size = tuple(int(v) for v in input_size)
    if len(size) != 3:
        raise ReceptiveFieldError(
            f"receptive_field: input_size must be (C, H, W) for 2-D images, got "
            f"{tuple(input_size)}; 1-D and 3-D inputs are not supported")
    if size[1] != size[2]:
        raise ReceptiveFieldError(
            f"receptive_field: input must be square (H == W), got {size[1]} x {size[2]}")

    param = next((t for t in list(model.parameters()) + list(model.buffers())
                  if t.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros((1, *size), device=device, dtype=dtype)

    mode = _RFMode(type(model).__name__)
    mode.set(x, _Meta(size[1], 1, 1))
    flags = [(m, m.training) for m in model.modules()]
    handles = []
    try:
        for name, module in model.named_modules():
            pre, post = _make_hooks(mode, name)
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post, always_call=True))
        model.eval()
        with torch.no_grad(), mode:
            out = model(x)
            metas = [m for m in (mode.get(t) for t in _iter_tensors(out))
                     if m is not None]
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag
    final = max(m.r for m in metas) if metas else None
    return RFTable(mode.rows, size, final_rf=final)
