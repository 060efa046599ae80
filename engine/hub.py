"""Resolve a hub id (or a local path) to a local directory, with errors a person can act on.

Why here: both the runtime (prebuilt artifacts) and the export stage (source models) accept
either a directory or a hub id. ``huggingface_hub`` does the download and caching; this module
only decides which of the two we were given and turns network failures into one clear message.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelDownloadError


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` with no local directory of that name."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def resolve_model_dir(name_or_path: str | os.PathLike, revision: str | None = None,
                      allow_patterns: list[str] | None = None) -> tuple[Path, str | None]:
    """Return ``(local_dir, resolved_revision)`` for a directory or a hub id.

    A local directory is returned as is (revision ``None``). A hub id is downloaded (or taken
    from the local cache) with ``huggingface_hub.snapshot_download``; the commit hash it
    resolved to is returned so manifests can pin it.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve(), None
    name = str(name_or_path)
    if path.exists():
        raise ModelDownloadError(f"{name!r} is a file, not a model or artifact directory")
    if not looks_like_hub_id(name):
        raise ModelDownloadError(
            f"no such directory: {name!r} (and it is not a hub id of the form 'owner/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a core dependency
        raise ModelDownloadError("huggingface_hub is required to download from the hub") from exc
    try:
        local = snapshot_download(repo_id=name, revision=revision, allow_patterns=allow_patterns)
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one clear error type
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = ("HF_HUB_OFFLINE is set and the model is not in the local cache"
                if offline else "check the id, your network connection and access rights")
        raise ModelDownloadError(
            f"could not download {name!r} (revision {revision or 'main'}) from the Hugging Face hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. {hint}; "
            f"or pass a local directory instead") from exc
    local_path = Path(local)
    return local_path, local_path.name if revision is None else revision
