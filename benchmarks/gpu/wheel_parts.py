"""Move a file (a wheel) or a folder (a model) to the device machine in parts, and put it back together there.

Why: each call to the device machine carries at most 64 MiB of the working tree, and onnxruntime-gpu
(a CUDA 13 build, ~247 MB) and the distilled 17m (~68 MiB) are bigger than that. Split them here into
parts of at most ``--part-mib`` MiB, carry one or two parts per call, copy each into a store that
outlives the call (``/tmp`` on the device stays while the machine is warm), and join them in the last
call. Every part and every whole is checked against the sha256 written at split time, so a part that
went missing or arrived damaged is named, not silently used. Plain stdlib (runs under any python3).

    python3 benchmarks/gpu/wheel_parts.py split benchmarks/gpu/wheels/onnxruntime_gpu-*.whl \\
        --out benchmarks/gpu/parts --part-mib 55                              # here
    python3 benchmarks/gpu/wheel_parts.py stash benchmarks/gpu/parts/*.part* \\
        --store /tmp/rerankrt-wheels                                          # on the device, every call
    python3 benchmarks/gpu/wheel_parts.py status --store /tmp/rerankrt-wheels
    python3 benchmarks/gpu/wheel_parts.py join --store /tmp/rerankrt-wheels --name NAME --out PATH

A folder is split as an uncompressed tar of its contents (``NAME.tar``, deterministic: sorted
members, no owners or times); ``join`` extracts it into ``--out``. What ``split`` writes, for
``NAME``: ``NAME.part00``, ``NAME.part01``, … and ``NAME.parts.json`` (the whole's name, kind, size
and sha256; each part's file, size and sha256; the count). The json is tiny: carry it with every
part (``stash`` needs it beside the part, or already in the store).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

MIB = 1 << 20
DEFAULT_PART_MIB = 55  # + the ~4 MiB working tree stays under a call's 64 MiB
MANIFEST_SUFFIX = ".parts.json"
SCHEMA = 1


class PartsError(RuntimeError):
    """A part or a whole is missing, damaged or unknown; the message names which."""


def sha256_file(path: Path, chunk: int = 8 * MIB) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}{MANIFEST_SUFFIX}"


def part_name(name: str, index: int) -> str:
    return f"{name}.part{index:02d}"


def _tar_dir(source: Path, target: Path) -> None:
    """``source``'s contents (paths relative to it) as an uncompressed, reproducible tar."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False, filter=clean)


def split(source: Path, out: Path, part_mib: float = DEFAULT_PART_MIB, name: str | None = None) -> dict:
    """Write ``source`` (a file, or a folder as a tar) into ``out`` as parts plus ``NAME.parts.json``."""
    source = Path(source)
    if not source.exists():
        raise PartsError(f"{source} does not exist")
    part_bytes = int(part_mib * MIB)
    if part_bytes <= 0:
        raise PartsError(f"--part-mib must be positive, got {part_mib}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "dir" if source.is_dir() else "file"
    name = name or source.name
    for stale in out.glob(f"{name}.part[0-9][0-9]*"):  # a split with another part size leaves none behind
        stale.unlink()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        whole = source
        if kind == "dir":
            whole = Path(tmp) / f"{name}.tar"
            _tar_dir(source, whole)
        size = whole.stat().st_size
        parts, whole_digest = [], hashlib.sha256()
        with open(whole, "rb") as fh:
            index = 0
            while True:
                block = fh.read(part_bytes)
                if not block and index > 0:
                    break
                whole_digest.update(block)
                target = out / part_name(name, index)
                target.write_bytes(block)
                parts.append({"file": target.name, "size": len(block), "sha256": hashlib.sha256(block).hexdigest()})
                index += 1
                if len(block) < part_bytes:
                    break
    manifest = {"schema": SCHEMA, "name": name, "kind": kind, "size": size, "sha256": whole_digest.hexdigest(),
                "part_bytes": part_bytes, "count": len(parts), "parts": parts}
    manifest_path(out, name).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _item_of(part: Path) -> tuple[str, int]:
    stem, _, suffix = part.name.rpartition(".part")
    if not stem or not suffix.isdigit():
        raise PartsError(f"{part.name} is not a part file (NAME.partNN)")
    return stem, int(suffix)


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PartsError(f"cannot read {path}: {exc}") from exc
    if manifest.get("schema") != SCHEMA or "parts" not in manifest:
        raise PartsError(f"{path} is not a parts manifest of schema {SCHEMA}")
    return manifest


def stash(parts: list[Path], store: Path) -> list[str]:
    """Copy carried parts (and their manifests) into ``store``, each checked against its sha256 first.

    Manifests (``NAME.parts.json``) given among ``parts`` are copied too; a part's manifest is found
    beside it or already in the store. A part the store already holds intact is left as is (a glob over
    the parts folder on the device also finds parts an earlier call carried). Every good part is stored;
    then, if any was bad, :class:`PartsError` names each. Returns what was stored.
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    stored: list[str] = []
    errors: list[str] = []
    for given in [Path(p) for p in parts if str(p).endswith(MANIFEST_SUFFIX)]:
        try:
            read_manifest(given)
        except PartsError as exc:
            errors.append(str(exc))
            continue
        if given.resolve() != (store / given.name).resolve():
            shutil.copyfile(given, store / given.name)
        stored.append(given.name)
    for part in [Path(p) for p in parts if not str(p).endswith(MANIFEST_SUFFIX)]:
        try:
            stored.append(_stash_part(part, store))
        except PartsError as exc:
            errors.append(str(exc))
    if errors:
        raise PartsError("; ".join(errors) + (f" (stored: {', '.join(stored)})" if stored else " (nothing stored)"))
    return stored


def _stash_part(part: Path, store: Path) -> str:
    name, index = _item_of(part)
    beside, kept = manifest_path(part.parent, name), manifest_path(store, name)
    source_manifest = beside if beside.is_file() else kept
    if not source_manifest.is_file():
        raise PartsError(f"no {name}{MANIFEST_SUFFIX} beside {part} or in {store}: carry it with the part")
    manifest = read_manifest(source_manifest)
    expected = next((p for p in manifest["parts"] if p["file"] == part.name), None)
    if expected is None or index >= manifest["count"]:
        raise PartsError(f"{part.name} is not listed in {source_manifest.name} ({manifest['count']} parts)")
    if source_manifest == beside and beside.resolve() != kept.resolve():
        shutil.copyfile(beside, kept)
    target = store / part.name
    if target.is_file() and target.stat().st_size == expected["size"] and sha256_file(target) == expected["sha256"]:
        return part.name  # already stored intact (carried again, or the store itself was globbed)
    if not part.is_file():
        raise PartsError(f"{part} is missing (not carried?)")
    digest = sha256_file(part)
    if digest != expected["sha256"] or part.stat().st_size != expected["size"]:
        raise PartsError(f"{part.name} is corrupt: sha256 {digest[:12]}…, size {part.stat().st_size}; "
                         f"expected {expected['sha256'][:12]}…, size {expected['size']}")
    if part.resolve() != target.resolve():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(part, tmp)
        os.replace(tmp, target)  # a call killed mid-copy never leaves a short part under the real name
    return part.name


def items(store: Path) -> list[str]:
    """Names of the wholes whose manifest is in ``store``."""
    return sorted(p.name[: -len(MANIFEST_SUFFIX)] for p in Path(store).glob(f"*{MANIFEST_SUFFIX}"))


def check(store: Path, name: str) -> dict:
    """``{"name", "kind", "count", "present", "missing", "corrupt", "complete"}`` of one whole in ``store``."""
    path = manifest_path(store, name)
    if not path.is_file():
        raise PartsError(f"{store} holds no {name}{MANIFEST_SUFFIX} (holds: {items(store) or 'nothing'})")
    manifest = read_manifest(path)
    present, missing, corrupt = [], [], []
    for part in manifest["parts"]:
        file = Path(store) / part["file"]
        if not file.is_file():
            missing.append(part["file"])
        elif file.stat().st_size != part["size"] or sha256_file(file) != part["sha256"]:
            corrupt.append(part["file"])
        else:
            present.append(part["file"])
    return {"name": name, "kind": manifest["kind"], "count": manifest["count"], "size": manifest["size"],
            "present": present, "missing": missing, "corrupt": corrupt, "complete": not missing and not corrupt}


def join(store: Path, out: Path, name: str | None = None) -> Path:
    """Reassemble ``name`` (the store's only whole when None) at ``out``; a folder is extracted into ``out``.

    Raises :class:`PartsError` naming every missing and corrupt part, or a whole whose sha256 differs.
    """
    store, out = Path(store), Path(out)
    names = items(store)
    if name is None:
        if len(names) != 1:
            raise PartsError(f"{store} holds {len(names)} wholes ({names or 'none'}): name one with --name")
        name = names[0]
    state = check(store, name)
    if not state["complete"]:
        raise PartsError(f"{name} cannot be joined from {store}: "
                         + "; ".join(f"{label} {', '.join(state[label])}" for label in ("missing", "corrupt")
                                     if state[label])
                         + f" ({len(state['present'])} of {state['count']} parts good)")
    manifest = read_manifest(manifest_path(store, name))
    out.parent.mkdir(parents=True, exist_ok=True)
    whole = out.with_name(out.name + ".joining") if manifest["kind"] == "file" else out.with_name(out.name + ".tar")
    digest = hashlib.sha256()
    with open(whole, "wb") as dst:
        for part in manifest["parts"]:
            with open(store / part["file"], "rb") as src:
                while block := src.read(8 * MIB):
                    digest.update(block)
                    dst.write(block)
    if digest.hexdigest() != manifest["sha256"]:
        whole.unlink()
        raise PartsError(f"{name}: the joined whole's sha256 {digest.hexdigest()[:12]}… differs from "
                         f"{manifest['sha256'][:12]}… although every part matched (parts from two splits?)")
    if manifest["kind"] == "file":
        os.replace(whole, out)
        return out
    shutil.rmtree(out, ignore_errors=True)
    with tarfile.open(whole) as tar:
        _extract(tar, out)
    whole.unlink()
    return out


def _extract(tar: tarfile.TarFile, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(tarfile, "data_filter"):  # 3.12+, and 3.10/3.11 security releases
        tar.extractall(out, filter="data")
        return
    root = out.resolve()
    for member in tar.getmembers():
        target = (out / member.name).resolve()
        if root not in target.parents or not (member.isfile() or member.isdir()):
            raise PartsError(f"refusing tar member {member.name!r}")
    tar.extractall(out)  # noqa: S202 - members checked above


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split", help="a file or folder into NAME.partNN files + NAME.parts.json")
    p.add_argument("source", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB)
    p.add_argument("--name", help="the whole's name (default: the source's file or folder name)")
    p = sub.add_parser("stash", help="check carried parts against their sha256 and copy them into the store")
    p.add_argument("parts", type=Path, nargs="+", help="part files (and NAME.parts.json files)")
    p.add_argument("--store", type=Path, required=True)
    p = sub.add_parser("status", help="which parts of each whole the store holds")
    p.add_argument("--store", type=Path, required=True)
    p = sub.add_parser("join", help="reassemble a whole (a folder is extracted into --out)")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", help="which whole (default: the store's only one)")
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            m = split(args.source, args.out, args.part_mib, args.name)
            print(f"{m['name']} ({m['kind']}, {m['size'] / MIB:,.1f} MiB) → {m['count']} parts of ≤ "
                  f"{m['part_bytes'] / MIB:g} MiB in {args.out}: "
                  + ", ".join(f"{p['file']} {p['size'] / MIB:.1f} MiB" for p in m["parts"]))
        elif args.command == "stash":
            print(f"stashed in {args.store}: {', '.join(stash(args.parts, args.store))}")
        elif args.command == "status":
            for name in items(args.store) or []:
                s = check(args.store, name)
                print(f"{name}: {len(s['present'])}/{s['count']} parts good"
                      + (f"; missing {', '.join(s['missing'])}" if s["missing"] else "")
                      + (f"; corrupt {', '.join(s['corrupt'])}" if s["corrupt"] else ""))
            if not items(args.store):
                print(f"{args.store} holds no parts")
        else:
            print(f"joined {join(args.store, args.out, args.name)}")
    except PartsError as exc:
        print(f"wheel_parts: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
