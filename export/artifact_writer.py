"""The last stage: the artifact directory, written whole or not at all.

It copies the tokenizer (and records its special ids), records the architecture, the graphs'
hashes and sizes, the parity reports (with the CPU class the gate ran on) and the versions that
made it, validates the manifest against the reader's schema (``engine/artifact.py``, the
contract) and replaces the output directory with the staging one in one rename. It must not
build, change or score graphs: what it writes was decided by the stages before it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path

from rerankrt.engine.artifact import (
    FORMAT_NAME,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    TOKENIZER_NAME,
    sha256_file,
    validate_manifest,
)
from rerankrt.engine.errors import ArtifactError
from rerankrt.engine.hardware import cpu_info

from .external_data import data_files
from .source import SourceModel


def refuse_overwrite(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ArtifactError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it",
                            str(output_dir))


@contextmanager
def staging_dir(output_dir: Path) -> Iterator[Path]:
    """A fresh directory next to ``output_dir``; removed unless :func:`write_artifact` committed it."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.staging-", dir=output_dir.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once committed


def tokenizer_spec(src: SourceModel) -> dict:
    """The manifest's tokenizer entry for the source's ``tokenizer.json``, which the artifact ships as is."""
    return {
        "file": TOKENIZER_NAME, "sha256": sha256_file(src.directory / "tokenizer.json"),
        "max_length": src.max_length, "truncation": "longest_first", "pad_id": _special_id(src, "pad"),
        "cls_id": _special_id(src, "cls"), "sep_id": _special_id(src, "sep"),
        "vocab_size": int(src.config.get("vocab_size", 0)),
    }


def write_artifact(staging: Path, output_dir: Path, src: SourceModel, tok_spec: dict, graphs: dict,
                   reports: dict, calibration_info: dict, allowed_failures: bool, seconds: float) -> Path:
    """Complete ``staging`` (graphs already in it) and commit it as ``output_dir``."""
    shutil.copyfile(src.directory / "tokenizer.json", staging / TOKENIZER_NAME)
    for info in graphs.values():
        path = staging / info["file"]  # bf16 shares the fp32 file
        info.update({"sha256": sha256_file(path), "size_bytes": path.stat().st_size,
                     "inputs": ["input_ids", "attention_mask"], "output": "logits"})
        for form in info.get("forms", {}).values():  # the same precision in another graph form (inline weights)
            form_path = staging / form["file"]
            form.update({"sha256": sha256_file(form_path), "size_bytes": form_path.stat().st_size})
        data = data_files(path)  # weights past protobuf's 2 GB: checked like the graph file itself
        if data:
            info["data_files"] = [{"file": d.name, "size_bytes": d.stat().st_size, "sha256": sha256_file(d)}
                                  for d in data]
    manifest = _manifest(src, tok_spec, graphs, reports, calibration_info, allowed_failures, seconds)
    validate_manifest(manifest, staging / MANIFEST_NAME)
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _commit(staging, output_dir)
    return output_dir


def _commit(staging: Path, output_dir: Path) -> None:
    """Replace ``output_dir`` with ``staging`` so a reader never sees a half-written artifact."""
    backup = None
    if output_dir.exists():
        backup = output_dir.with_name(output_dir.name + f".old-{os.getpid()}")
        output_dir.rename(backup)
    staging.rename(output_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _special_id(src: SourceModel, which: str) -> int:
    from tokenizers import Tokenizer

    value = src.config.get(f"{which}_token_id")
    if isinstance(value, int):
        return value
    tok = Tokenizer.from_file(str(src.directory / "tokenizer.json"))
    for name in {"pad": ("[PAD]", "<pad>"), "cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>")}[which]:
        found = tok.token_to_id(name)
        if found is not None:
            return int(found)
    return 0


def _architecture(src: SourceModel) -> dict:
    cfg = src.config
    return {
        "model_type": src.model_type,
        "architectures": cfg.get("architectures"),
        "hidden_size": cfg.get("hidden_size"),
        "num_hidden_layers": cfg.get("num_hidden_layers"),
        "num_attention_heads": cfg.get("num_attention_heads"),
        "intermediate_size": cfg.get("intermediate_size"),
        "vocab_size": cfg.get("vocab_size"),
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "pooling": src.pooling,
        "head": [{"kind": h.kind, "shape": list(h.weight.shape), "activation": h.activation} for h in src.head],
        "num_labels": src.num_labels,
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("rerankrt", "torch", "transformers", "onnx", "onnxruntime", "tokenizers", "numpy"):
        with suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def _manifest(src: SourceModel, tok_spec: dict, graphs: dict, reports: dict, calibration_info: dict,
              allowed_failures: bool, seconds: float) -> dict:
    """Everything the runtime needs, and everything a person needs to trust it (see engine/artifact.py)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "format": FORMAT_NAME,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"id": src.source_id, "revision": src.revision, "layout": src.layout,
                   "files_sha256": src.file_hashes},
        "architecture": _architecture(src),
        "tokenizer": tok_spec,
        "activation": src.activation,
        "graphs": graphs,
        # the CPU class decides int8 arithmetic; the runtime re-checks int8 on any other (engine/int8_check.py)
        "parity": {"calibration": calibration_info, "results": reports, "allowed_failures": allowed_failures,
                   "cpu_class": cpu_info().int8_class},
        "export": {"versions": _versions(), "cpu": cpu_info().summary(), "seconds": round(seconds, 2)},
    }
