"""Which weight MatMuls the int8 passes quantize: shared by ``int8_static`` and ``int8_dynamic``.

Activation×activation MatMuls (attention scores and context) are never candidates, and what the
parity gate is most sensitive to (the first layer's attention projections, the last encoder layer,
the head) stays fp32, as the feasibility study and issue 16's per-block study found. This module only
chooses; it changes no graph.
"""

from __future__ import annotations

import re

import onnx

# What int8 keeps fp32: a layer index (the whole layer, negative counts from the last) or "N.attn" / "N.mlp" (one
# block of it). The first layer's attention projections (their input, the embeddings' LayerNorm, is what uint8
# activations round worst: quantized they take the distilled 17m's max |Δ| from 0.14 to 0.22 on 2,600 pairs) and
# the last layer; the first layer's MLP is int8 (same error, 1.06-1.08x the speed on the 17m, emulated AVX2 and
# VNNI; it was fp32 before issue 16).
KEEP_FP32_LAYERS: tuple[int | str, ...] = ("0.attn", -1)
LAYER_PARTS = ("attn", "mlp")


def parse_fp32_entry(entry: int | str) -> tuple[int, str | None]:
    """``3`` → (3, None): the whole layer; ``"0.attn"`` → (0, "attn"). Raises ValueError on anything else."""
    if isinstance(entry, int) and not isinstance(entry, bool):
        return entry, None
    match = re.fullmatch(r"(-?[0-9]+)(?:\.(\w+))?", str(entry).strip())  # the CLI's syntax, no int() leniency
    if not match:
        raise ValueError(f"expected a layer index or 'N.attn' / 'N.mlp', got {entry!r}")
    if match.group(2) is not None and match.group(2) not in LAYER_PARTS:
        raise ValueError(f"layer part must be one of {LAYER_PARTS}, got {entry!r}")
    return int(match.group(1)), match.group(2)


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    weights = {init.name for init in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights]


def _kept(num_layers: int, keep_fp32_layers: tuple[int | str, ...]) -> set[tuple[int, str | None]]:
    """(non-negative layer, part or None) pairs; a whole layer absorbs its parts, and all its parts make the
    whole layer (so the manifest names the same weights one way)."""
    parsed = {(index % num_layers, part) for index, part in map(parse_fp32_entry, keep_fp32_layers)}
    parsed |= {(layer, None) for layer, _ in parsed if all((layer, part) in parsed for part in LAYER_PARTS)}
    return {(layer, part) for layer, part in parsed if part is None or (layer, None) not in parsed}


def fp32_layers(num_layers: int, keep_fp32_layers: tuple[int | str, ...] = KEEP_FP32_LAYERS) -> list[int | str]:
    """What stays fp32, normalised: whole layers as non-negative ints, parts as ``"N.attn"`` (none when the
    layers are not known)."""
    if not num_layers:
        return []
    return [layer if part is None else f"{layer}.{part}"
            for layer, part in sorted(_kept(num_layers, keep_fp32_layers), key=lambda lp: (lp[0], lp[1] or ""))]


def select_nodes(model: onnx.ModelProto, num_layers: int, keep_fp32_layers: tuple[int | str, ...] = KEEP_FP32_LAYERS,
                 keep_head: bool = True) -> list[str]:
    """Names of weight MatMuls to quantize, skipping the protected layers (or blocks) and the head."""
    protected = _kept(num_layers, keep_fp32_layers) if num_layers else set()
    chosen = []
    for node in weight_matmuls(model):
        weight = node.input[1]
        match = re.match(r"layers\.(\d+)\.(\w+)\.", weight)
        if match and {(layer := int(match.group(1)), None), (layer, match.group(2))} & protected:
            continue
        if keep_head and weight.startswith("head."):
            continue
        chosen.append(node.name)
    return chosen
