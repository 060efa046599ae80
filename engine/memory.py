"""Will it fit? Memory estimates checked before an export or a load starts, not after the OOM killer.

Why: exporting or loading a model too big for the machine used to end in a kill -9 minutes in
(or a swap storm), with nothing said. The estimates here are per byte of weights, measured (see
the README's "Every Ettin size" table for the measured peaks they come from), compared with what
the kernel says is available (``MemAvailable``: free plus reclaimable cache). Where the kernel does
not say (not Linux), nothing is refused.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InsufficientMemoryError

# Peak resident memory of a load, per byte of graph (file plus external data) on disk: onnxruntime
# holds the weights once, plus its arenas and the tokenizer.
LOAD_BYTES_PER_GRAPH_BYTE = 1.3
LOAD_OVERHEAD_BYTES = 400 << 20


def available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def require(needed: int, what: str, hint: str, available: int | None = None) -> None:
    """Raise :class:`InsufficientMemoryError` when ``needed`` bytes exceed what is available."""
    available = available_bytes() if available is None else available
    if available is not None and needed > available:
        raise InsufficientMemoryError(
            f"{what} needs about {needed / 2**30:.1f} GiB of memory and this machine has "
            f"{available / 2**30:.1f} GiB available: {hint}", needed, available)


def graph_bytes(graph: Path, data_files: list[Path] | tuple[Path, ...] = ()) -> int:
    return Path(graph).stat().st_size + sum(Path(d).stat().st_size for d in data_files)


def check_load(graph: Path, data_files: list[Path] | tuple[Path, ...] = (), available: int | None = None) -> None:
    """Refuse a load that would not fit, before the backend reads a byte of the graph."""
    size = graph_bytes(graph, data_files)
    require(int(size * LOAD_BYTES_PER_GRAPH_BYTE) + LOAD_OVERHEAD_BYTES, f"loading {Path(graph).name} "
            f"({size / 2**30:.1f} GiB on disk)", "use a smaller precision (int8 is ~1/4 of fp32) or a bigger machine",
            available)
