"""The artifact directory and its manifest: the contract between export and runtime.

Why it lives on the reader's side: the runtime must be able to refuse anything it does not
understand (a newer schema, a missing or altered file, a tokenizer that does not fit the graph)
with a precise error, and the export stage writes exactly what this module reads.

Layout::

    artifact/
      manifest.json        schema below
      tokenizer.json       the source model's fast tokenizer (padding/truncation are set at load)
      model.fp32.onnx      one graph per precision (file names listed in the manifest)
      model.int8.onnx ...
      model.fp32.onnx.data the weights of a graph past protobuf's 2 GB limit (external data), listed
                           under the graph's ``data_files`` with size and sha256
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_NAME = "rerankrt-artifact"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def graph_file_name(precision: str) -> str:
    return f"model.{precision}.onnx"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_REQUIRED = {
    "schema_version": int,
    "format": str,
    "architecture": dict,
    "tokenizer": dict,
    "graphs": dict,
    "activation": str,
}
_REQUIRED_TOKENIZER = {"file": str, "max_length": int, "truncation": str, "pad_id": int, "cls_id": int,
                       "sep_id": int, "vocab_size": int}


@dataclass(frozen=True)
class GraphEntry:
    precision: str
    path: Path
    sha256: str
    size_bytes: int
    info: dict


@dataclass(frozen=True)
class Artifact:
    """A validated artifact directory. Construct with :func:`load_artifact`."""

    directory: Path
    manifest: dict

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / self.manifest["tokenizer"]["file"]

    @property
    def tokenizer_spec(self) -> dict:
        return self.manifest["tokenizer"]

    @property
    def max_length(self) -> int:
        return int(self.manifest["tokenizer"]["max_length"])

    @property
    def activation(self) -> str:
        return self.manifest["activation"]

    @property
    def num_labels(self) -> int:
        return int(self.manifest["architecture"].get("num_labels", 1))

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest["graphs"])

    def graph(self, precision: str, verify: bool = True, form: str | None = None) -> GraphEntry:
        """The graph file for ``precision``, checked against its recorded size and sha256.

        ``form``: the precision's graph in that other form (``graphs.<precision>.forms``, e.g. "attention-op")
        where the artifact has it, else the main graph: a backend asks for the form it runs fastest.
        """
        graphs = self.manifest["graphs"]
        if precision not in graphs:
            raise ArtifactError(
                f"artifact {self.directory} has no {precision!r} graph; available: {sorted(graphs)}",
                str(self.directory))
        info = graphs[precision]
        if form is not None and form in info.get("forms", {}):  # the form's own file, size and hash only
            kept = {k: v for k, v in info.items() if k not in ("forms", "data_files", "file", "sha256", "size_bytes")}
            info = {**kept, **info["forms"][form], "attention": form}
        path = self.directory / info["file"]
        size = _check_file(path, info, "graph file", "", verify)
        for data in info.get("data_files", []):  # the weights of a graph past 2 GB, beside it
            _check_file(self.directory / data["file"], data, "external data file", f" (the weights of {path.name})",
                        verify)
        return GraphEntry(precision, path, info.get("sha256", ""), size, info)


def _check_file(path: Path, recorded: dict, what: str, whose: str, verify: bool) -> int:
    """``path`` exists and matches its recorded ``size_bytes`` (and ``sha256`` with ``verify``); its size."""
    if not path.is_file():
        raise ArtifactError(f"{what} missing: {path}{whose}", str(path))
    size = path.stat().st_size
    if size != recorded.get("size_bytes", size):
        raise ArtifactError(f"{what} {path} has {size} bytes, manifest says {recorded['size_bytes']}: "
                            "the file is truncated or was replaced", str(path))
    if verify and "sha256" in recorded and sha256_file(path) != recorded["sha256"]:
        raise ArtifactError(f"{what} {path} does not match its sha256 in the manifest: corrupted", str(path))
    return size


def _check_types(section: dict, spec: dict, where: str, path: Path) -> None:
    for key, typ in spec.items():
        if key not in section:
            raise ArtifactError(f"{where} lacks required field {key!r}", str(path))
        if not isinstance(section[key], typ) or (typ is int and isinstance(section[key], bool)):
            raise ArtifactError(f"{where} field {key!r} should be {typ.__name__}, got {section[key]!r}", str(path))


def validate_manifest(manifest: Any, path: Path) -> dict:
    """Schema checks shared by the reader and the writer (export validates before writing)."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} must hold a JSON object", str(path))
    version = manifest.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema_version {version}, this rerankrt reads up to {SCHEMA_VERSION}: "
            "upgrade rerankrt (pip install -U rerankrt) or re-export with this version", str(path))
    _check_types(manifest, _REQUIRED, str(path), path)
    if manifest["format"] != FORMAT_NAME:
        raise ArtifactError(f"{path} is not a rerankrt manifest (format={manifest['format']!r})", str(path))
    _check_types(manifest["tokenizer"], _REQUIRED_TOKENIZER, f"{path} [tokenizer]", path)
    if not manifest["graphs"]:
        raise ArtifactError(f"{path} lists no graphs", str(path))
    for precision, info in manifest["graphs"].items():
        if precision not in PRECISIONS:
            raise ArtifactError(f"{path} lists unknown precision {precision!r}", str(path))
        if not isinstance(info, dict) or not isinstance(info.get("file"), str):
            raise ArtifactError(f"{path} graph entry {precision!r} lacks a file name", str(path))
        data = info.get("data_files", [])
        if not isinstance(data, list) or not all(isinstance(d, dict) and isinstance(d.get("file"), str)
                                                 and "/" not in d["file"] and "\\" not in d["file"] for d in data):
            raise ArtifactError(f"{path} graph entry {precision!r} has malformed data_files (a list of "
                                "{file, size_bytes, sha256} in the artifact directory)", str(path))
        forms = info.get("forms", {})
        if not isinstance(forms, dict) or not all(
                isinstance(f, dict) and isinstance(f.get("file"), str) and "/" not in f["file"]
                and "\\" not in f["file"] and isinstance(f.get("sha256"), str)
                and isinstance(f.get("size_bytes"), int) and "data_files" not in f for f in forms.values()):
            raise ArtifactError(f"{path} graph entry {precision!r} has malformed forms (form name → "
                                "{file, size_bytes, sha256}, a file in the artifact directory, no data_files)",
                                str(path))
    if manifest["activation"] not in ("identity", "sigmoid"):
        raise ArtifactError(f"{path} has unknown activation {manifest['activation']!r}", str(path))
    return manifest


def is_artifact_dir(path: Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def load_artifact(directory: str | Path) -> Artifact:
    """Read and validate ``manifest.json``; check that the tokenizer file is there and intact."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}", str(directory))
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        hint = (" (this looks like a source model: export it first with `rerankrt export`)"
                if (directory / "config.json").is_file() else "")
        raise ArtifactError(f"{directory} has no {MANIFEST_NAME}: not a rerankrt artifact{hint}", str(directory))
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}): the manifest is corrupted",
                            str(manifest_path)) from exc
    validate_manifest(manifest, manifest_path)
    tok = directory / manifest["tokenizer"]["file"]
    if not tok.is_file():
        raise ArtifactError(f"tokenizer file missing: {tok}", str(tok))
    expected = manifest["tokenizer"].get("sha256")
    if expected and sha256_file(tok) != expected:
        raise ArtifactError(f"tokenizer file {tok} does not match its sha256 in the manifest: corrupted", str(tok))
    return Artifact(directory.resolve(), manifest)
