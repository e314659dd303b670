"""Layer names, in one place: what they mean, how a selection is parsed, and their depth order.

* ``"0"`` … ``"L"``: ``hidden_states[i]`` of the encoder (``"0"`` is the input to the first transformer layer, after
  the feature projection and positional embedding; not the raw CNN output);
* ``"cnn"``: the convolutional feature encoder's output (before the transformer);
* ``"<L>_norm"`` (e.g. ``"24_norm"``): the last layer after the encoder's final LayerNorm, for stable-layer-norm
  models, where ``hidden_states[-1]`` is taken *before* that norm in transformers 5;
* any other name (e.g. ``"mfcc"``, ``"logmel"`` of the acoustic baselines) is a non-hierarchical feature set.

Depth order is ``cnn``, ``0`` … ``L``, ``L_norm``, then other names alphabetically. :func:`relative_depth` puts layers
of encoders of different depths on one axis (0 = first hidden state, 1 = last).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["LayerName", "layer_sort_key", "layer_order", "parse_layers", "relative_depth", "describe_layer"]

LayerName = str

_NORM = re.compile(r"(\d+)_norm")


def layer_sort_key(name: str) -> tuple[int, int, str]:
    """Sort key of a layer name in depth order (see the module docstring)."""
    name = str(name)
    if name == "cnn":
        return (0, 0, name)
    if name.isdigit():
        return (1, int(name), name)
    if m := _NORM.fullmatch(name):
        return (2, int(m.group(1)), name)
    return (3, 0, name)


def layer_order(layers: Iterable[object]) -> list[str]:
    """The distinct layer names of ``layers`` (any iterable, e.g. a table column) in depth order."""
    return sorted(dict.fromkeys(str(x) for x in layers), key=layer_sort_key)


def parse_layers(spec: str | int | Sequence[str | int], available: Sequence[str]) -> list[str]:
    """Resolve a layer selection against the ``available`` layer names; the result is in depth order.

    ``"all"`` -> every available layer; an int or digit string -> that hidden state; ``"0-4,8"`` -> ranges
    (inclusive) and single layers; ``"cnn"``, ``"L_norm"`` (alias of ``"<L>_norm"``) and ``"-1"`` (the last
    hidden state) are accepted; a list may mix all of these. Unknown layers raise ``ValueError`` listing what exists.
    """
    avail = [str(a) for a in available]
    numeric = sorted(int(a) for a in avail if a.isdigit())
    last = numeric[-1] if numeric else None
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return layer_order(avail)
    items: list[str | int]
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        items = [int(spec)]
    elif isinstance(spec, str):
        items = [p.strip() for p in spec.split(",") if p.strip()]
    else:
        items = []
        for s in spec:
            items.extend([p.strip() for p in s.split(",") if p.strip()] if isinstance(s, str) else [int(s)])
    if not items:
        raise ValueError(f"empty layer selection {spec!r}; available: {avail}")
    out: list[str] = []
    for it in items:
        names: list[str]
        if isinstance(it, int) or re.fullmatch(r"-?\d+", str(it)):
            i = int(it)
            if i < 0 and last is not None:
                i = last + 1 + i
            names = [str(i)]
        elif m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", str(it)):
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError(f"layer range {it!r} is descending")
            names = [str(i) for i in range(a, b + 1)]
        elif it == "L_norm" and last is not None:
            names = [f"{last}_norm"]
        else:
            names = [str(it)]
        for n in names:
            if n not in avail:
                raise ValueError(f"layer {n!r} (from selection {spec!r}) is not available; available: {avail}")
            if n not in out:
                out.append(n)
    return layer_order(out)


def relative_depth(name: str, layers: Sequence[str]) -> float:
    """Position of ``name`` on a common depth axis given all layer names of its encoder.

    Hidden state ``i`` of an encoder whose last hidden state is ``L`` sits at ``i / L``; ``"cnn"`` half a step before
    0; ``"<L>_norm"`` at 1. Non-hierarchical feature sets (acoustic baselines) sit at -0.15, left of every encoder.
    """
    name = str(name)
    numeric = [int(x) for x in layers if str(x).isdigit()]
    top = max(numeric) if numeric else 0
    step = 1.0 / top if top > 0 else 1.0
    if name.isdigit():
        return int(name) / top if top > 0 else 0.0
    if name == "cnn":
        return -0.5 * step
    if _NORM.fullmatch(name):
        return 1.0
    return -0.15


def describe_layer(name: str) -> str:
    """A few words on what a layer name means (for reports and tables)."""
    name = str(name)
    if name == "cnn":
        return "CNN feature-encoder output (before the transformer)"
    if name == "0":
        return "hidden state 0: input to the first transformer layer (after projection + positional embedding)"
    if name.isdigit():
        return f"hidden state {name}: output of transformer layer {name}"
    if m := _NORM.fullmatch(name):
        return f"output of transformer layer {m.group(1)} after the encoder's final LayerNorm"
    return f"feature set {name!r} (not a transformer layer)"
