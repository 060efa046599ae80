"""The PyTorch reference the exported graphs are verified against.

Why not sentence-transformers: the export stage must not depend on it (it is a test-only
dependency). The backbone here *is* transformers' own implementation (``AutoModel`` /
``AutoModelForSequenceClassification``), and the head is the few layers ``source.py`` read
from the module folders, applied with torch ops exactly as sentence-transformers applies them.
The tests close the loop by comparing against ``CrossEncoder.predict`` itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .calibration import padded_batches
from .source import SourceModel

DESCRIPTION = "PyTorch fp32 (transformers eager attention + head)"

_ACT = {"identity": nn.Identity, "gelu": nn.GELU, "tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
        "silu": nn.SiLU}


class ReferenceCrossEncoder(nn.Module):
    """``(input_ids, attention_mask) -> logits [batch, num_labels]`` in PyTorch fp32."""

    def __init__(self, src: SourceModel) -> None:
        super().__init__()
        from transformers import AutoModel, AutoModelForSequenceClassification

        self.src = src
        kwargs = {"attn_implementation": "eager", "dtype": torch.float32}
        if src.layout == "classic":
            self.backbone = AutoModelForSequenceClassification.from_pretrained(str(src.directory), **kwargs)
            self.head = None
            return
        self.backbone = AutoModel.from_pretrained(str(src.directory), **kwargs)
        layers: list[nn.Module] = []
        self.residual: list[bool] = []
        for layer in src.head:
            if layer.kind == "dense":
                lin = nn.Linear(layer.weight.shape[1], layer.weight.shape[0], bias=layer.bias is not None)
                lin.weight.data = torch.from_numpy(np.array(layer.weight, dtype=np.float32))
                if layer.bias is not None:
                    lin.bias.data = torch.from_numpy(np.array(layer.bias, dtype=np.float32))
                layers.append(nn.Sequential(lin, _ACT[layer.activation]()))
            else:
                norm = nn.LayerNorm(layer.weight.shape[0], eps=layer.eps, bias=layer.bias is not None)
                norm.weight.data = torch.from_numpy(np.array(layer.weight, dtype=np.float32))
                if layer.bias is not None:
                    norm.bias.data = torch.from_numpy(np.array(layer.bias, dtype=np.float32))
                layers.append(norm)
            self.residual.append(layer.residual)
        self.head = nn.ModuleList(layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.src.pooling == "cls":
            x = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            x = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        for layer, residual in zip(self.head, self.residual):
            x = x + layer(x) if residual else layer(x)
        return x


def load_reference(src: SourceModel) -> ReferenceCrossEncoder:
    return ReferenceCrossEncoder(src).eval()


@torch.inference_mode()
def reference_logits(module: ReferenceCrossEncoder, batches) -> np.ndarray:
    """Score padded batches ``[(ids, mask), ...]`` (numpy int64) and concatenate the logits."""
    outs = [module(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy() for ids, mask in batches]
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, module.src.num_labels), np.float32)


def score_reference(src: SourceModel, token_ids: list[list[int]], pad_id: int) -> np.ndarray:
    """Reference logits ``[n, num_labels]`` in input order, from the calibration's padded batches."""
    batches = padded_batches(token_ids, pad_id)
    logits = reference_logits(load_reference(src), [(b.input_ids, b.attention_mask) for b in batches])
    ordered = np.empty_like(logits)
    ordered[np.concatenate([b.indices for b in batches])] = logits
    return ordered
