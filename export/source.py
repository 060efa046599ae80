"""Read a CrossEncoder from its files: the modular (Ettin) layout or a classic single module.

Why not import sentence-transformers: the export stage must understand exactly which modules a
model is made of and refuse anything it cannot translate faithfully, by name. Reading the
files (``modules.json``, each module's ``config.json`` and safetensors) makes that explicit and
keeps sentence-transformers a test-only dependency.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rerankrt.engine.artifact import sha256_file
from rerankrt.engine.errors import UnsupportedModelError
from rerankrt.engine.hub import resolve_model_dir

ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "relu": "relu", "tanh": "tanh", "silu": "silu",
                  "identity": "identity", "linear": "identity"}
SCORE_ACTIVATIONS = {"identity", "sigmoid"}


@dataclass
class HeadLayer:
    """One step of the scoring head, applied to the pooled vector."""

    kind: str  # "dense" | "layernorm"
    weight: np.ndarray
    bias: np.ndarray | None = None
    activation: str = "identity"
    eps: float = 1e-5
    residual: bool = False


@dataclass
class SourceModel:
    """Everything the graph builders and the manifest need, independent of sentence-transformers."""

    directory: Path
    source_id: str
    revision: str | None
    layout: str  # "modular" | "classic"
    config: dict
    pooling: str  # "cls" | "mean"
    head: list[HeadLayer]
    num_labels: int
    activation: str  # applied to the logits by default at serve time: "identity" | "sigmoid"
    max_length: int
    backbone_weights_file: Path
    weight_prefix: str  # prefix of backbone tensors inside the weights file ("" or "model.")
    file_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    def load_backbone_weights(self) -> Mapping[str, np.ndarray]:
        """Backbone tensors as fp32 numpy arrays, with the classic ``model.`` prefix stripped.

        Read lazily, one tensor per lookup: the graph builder turns each into an initializer (or
        appends it to the external-data file) and drops it, so building the 1b's graph holds one
        tensor at a time instead of the whole 4 GB model (twice, with the fp32 copies).
        """
        return _PrefixedTensors(_open_tensors(self.backbone_weights_file), self.weight_prefix)

    def weight_bytes_fp32(self) -> int:
        """Bytes of every tensor in the weights file as fp32, read from the file's header (no tensor loaded)."""
        return 4 * _numel(self.backbone_weights_file)


class _PrefixedTensors(Mapping[str, np.ndarray]):
    """The tensors under ``prefix``, by their name without it, loaded as fp32 on each lookup."""

    def __init__(self, tensors: Mapping[str, np.ndarray], prefix: str) -> None:
        self._tensors, self._prefix = tensors, prefix

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self._tensors[self._prefix + name], dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return (k[len(self._prefix):] for k in self._tensors if k.startswith(self._prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _SafetensorsFile(Mapping[str, np.ndarray]):
    """A safetensors file read one tensor at a time (bf16 through torch, which numpy cannot hold)."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._path = path
        with safe_open(str(path), framework="numpy") as fh:
            self._names = list(fh.keys())

    def __getitem__(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        if name not in self._names:
            raise KeyError(name)
        try:
            with safe_open(str(self._path), framework="numpy") as fh:
                return fh.get_tensor(name)
        except TypeError:  # bf16 is not numpy-representable
            with safe_open(str(self._path), framework="pt") as fh:
                return fh.get_tensor(name).float().numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _open_tensors(path: Path) -> Mapping[str, np.ndarray]:
    return _SafetensorsFile(path) if path.suffix == ".safetensors" else _load_tensors(path)


def _numel(path: Path) -> int:
    """Elements of all tensors in a weights file (the safetensors header only; a .bin is loaded)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            return sum(int(np.prod(fh.get_slice(k).get_shape(), dtype=np.int64)) for k in fh.keys())  # noqa: SIM118 - safe_open is not iterable
    return sum(int(a.size) for a in _load_tensors(path).values())


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        try:
            return load_file(str(path))
        except TypeError:  # bf16 tensors are not numpy-representable; go through torch
            from safetensors.torch import load_file as load_torch
            return {k: v.float().numpy() for k, v in load_torch(str(path)).items()}
    import torch  # pytorch_model.bin (older checkpoints)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UnsupportedModelError(f"missing {path.name} in {path.parent}") from exc
    except json.JSONDecodeError as exc:
        raise UnsupportedModelError(f"{path} is not valid JSON: {exc}") from exc


def _weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    if (directory / "model.safetensors.index.json").is_file():
        raise UnsupportedModelError(f"sharded checkpoints are not supported yet: {directory}")
    raise UnsupportedModelError(f"no model.safetensors or pytorch_model.bin in {directory}")


def _module_activation(name: str, where: str) -> str:
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported activation {name!r} in {where}")
    return ACTIVATIONS[name]


def _score_activation(st_config: dict, hf_config: dict, num_labels: int) -> str:
    """The activation sentence-transformers' ``CrossEncoder`` applies by default."""
    name = st_config.get("activation_fn") or hf_config.get("sentence_transformers", {}).get("activation_fn")
    if name is None:
        return "sigmoid" if num_labels == 1 else "identity"
    act = _module_activation(name, "config_sentence_transformers.json")
    if act not in SCORE_ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported CrossEncoder activation_fn {name!r}")
    return act


def _max_length(directory: Path, hf_config: dict) -> int:
    """Mirror sentence-transformers: tokenizer ``model_max_length`` capped at the position limit."""
    tok_cfg = _read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
    st_cfg = (_read_json(directory / "sentence_bert_config.json")
              if (directory / "sentence_bert_config.json").is_file() else {})
    max_len = st_cfg.get("max_seq_length") or tok_cfg.get("model_max_length")
    limit = hf_config.get("max_position_embeddings")
    if not isinstance(max_len, int) or max_len > 10**6:
        max_len = limit or 512
    if isinstance(limit, int) and limit > 0:
        max_len = min(max_len, limit)
    return int(max_len)


def _read_modular_head(directory: Path, modules: list[dict]) -> tuple[str, list[HeadLayer]]:
    pooling = None
    head: list[HeadLayer] = []
    for module in modules[1:]:
        mtype = module.get("type", "")
        mdir = directory / module.get("path", "")
        short = mtype.rsplit(".", 1)[-1]
        if short == "Pooling":
            cfg = _read_json(mdir / "config.json")
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v is True]
            mode = cfg.get("pooling_mode") or (modes[0].removeprefix("pooling_mode_").removesuffix("_token")
                                               if len(modes) == 1 else None)
            mode = {"cls_token": "cls", "mean_tokens": "mean"}.get(mode, mode)
            if mode not in ("cls", "mean"):
                raise UnsupportedModelError(f"unsupported pooling {cfg} in {mdir}: only cls and mean")
            pooling = mode
        elif short == "Dense":
            cfg = _read_json(mdir / "config.json")
            tensors = _load_tensors(_weights_file(mdir))
            act = _module_activation(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"),
                                     f"{mdir}/config.json")
            residual = bool(cfg.get("use_residual", False))
            if residual and cfg.get("in_features") != cfg.get("out_features"):
                raise UnsupportedModelError(f"Dense with a projected residual is not supported: {mdir}")
            head.append(HeadLayer("dense", tensors["linear.weight"].astype(np.float32),
                                  tensors.get("linear.bias"), act, residual=residual))
        elif short == "LayerNorm":
            tensors = _load_tensors(_weights_file(mdir))
            head.append(HeadLayer("layernorm", tensors["norm.weight"].astype(np.float32),
                                  tensors.get("norm.bias")))
        else:
            raise UnsupportedModelError(
                f"unsupported module {mtype!r} (modules.json index {module.get('idx')}); "
                "supported after the Transformer: Pooling, Dense, LayerNorm")
    if pooling is None:
        raise UnsupportedModelError("modular CrossEncoder without a Pooling module")
    if not head or head[-1].kind != "dense":
        raise UnsupportedModelError("modular CrossEncoder must end in a Dense layer producing the score")
    return pooling, head


def _read_classic_head(tensors_file: Path, config: dict) -> tuple[str, list[HeadLayer], str]:
    """``ModernBertForSequenceClassification``: head.dense → act → head.norm → classifier."""
    tensors = _open_tensors(tensors_file)  # the head's few tensors only, not the backbone's
    act = HF_ACTIVATIONS.get(str(config.get("classifier_activation", "gelu")))
    if act is None:
        raise UnsupportedModelError(f"unsupported classifier_activation {config.get('classifier_activation')!r}")
    head = [
        HeadLayer("dense", tensors["head.dense.weight"], tensors.get("head.dense.bias"), act),
        HeadLayer("layernorm", tensors["head.norm.weight"], tensors.get("head.norm.bias"),
                  eps=float(config.get("norm_eps", 1e-5))),
        HeadLayer("dense", tensors["classifier.weight"], tensors.get("classifier.bias")),
    ]
    pooling = str(config.get("classifier_pooling", "cls"))
    if pooling not in ("cls", "mean"):
        raise UnsupportedModelError(f"unsupported classifier_pooling {pooling!r}")
    return pooling, head, "model."


def read_source(name_or_path: str, revision: str | None = None) -> SourceModel:
    """Read a CrossEncoder from a local directory or a hub id (downloaded with huggingface_hub)."""
    directory, resolved_revision = resolve_model_dir(name_or_path, revision)
    config = _read_json(directory / "config.json")
    if not (directory / "tokenizer.json").is_file():
        raise UnsupportedModelError(
            f"{directory} has no tokenizer.json: a fast (Rust) tokenizer is required to serve the model")
    st_config = (_read_json(directory / "config_sentence_transformers.json")
                 if (directory / "config_sentence_transformers.json").is_file() else {})
    weights = _weights_file(directory)
    modules = _read_json(directory / "modules.json") if (directory / "modules.json").is_file() else None
    architectures = config.get("architectures") or []
    is_classic = any(a.endswith("ForSequenceClassification") for a in architectures)

    if modules and len(modules) > 1:
        first = modules[0].get("type", "")
        if not first.endswith("Transformer"):
            raise UnsupportedModelError(f"first module must be a Transformer, got {first!r}")
        pooling, head = _read_modular_head(directory, modules)
        layout, prefix, num_labels = "modular", "", int(head[-1].weight.shape[0])
    elif is_classic:
        num_labels = len(config.get("id2label") or {0: 0})
        layout = "classic"
        if config.get("model_type") == "modernbert":
            pooling, head, prefix = _read_classic_head(weights, config)
        else:  # BERT/MiniLM & co: exported whole through torch, no native head needed
            pooling, head, prefix = "cls", [], ""
    else:
        raise UnsupportedModelError(
            f"{directory} is neither a modular CrossEncoder (modules.json with Transformer → Pooling → "
            f"Dense/LayerNorm) nor a *ForSequenceClassification model (architectures={architectures})")

    hashed = [p for p in directory.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin")]
    return SourceModel(
        directory=directory,
        source_id=str(name_or_path),
        revision=resolved_revision,
        layout=layout,
        config=config,
        pooling=pooling,
        head=head,
        num_labels=num_labels,
        activation=_score_activation(st_config, config, num_labels),
        max_length=_max_length(directory, config),
        backbone_weights_file=weights,
        weight_prefix=prefix,
        file_hashes={str(p.relative_to(directory)): sha256_file(p) for p in sorted(hashed)},
    )
