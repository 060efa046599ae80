"""The calibration set the parity gate scores: the built-in pairs, or a user's own file.

The built-in pairs live on the engine side (``rerankrt.engine.builtin_pairs``) because the
runtime's int8 check scores them too; this module adds the loader for a user's pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

from rerankrt.engine.builtin_pairs import builtin_pairs, group_ids

__all__ = ["builtin_pairs", "group_ids", "load_pairs_file"]


def load_pairs_file(path: Path) -> list[tuple[str, str]]:
    """JSONL with ``query`` and ``document`` (or ``text``) fields, or TSV ``query<TAB>document``."""
    path = Path(path)
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if path.suffix in (".jsonl", ".json"):
                try:
                    row = json.loads(line)
                    query, document = row["query"], row["document"] if "document" in row else row["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: expected a JSON object with query and document "
                                     f"(missing or unreadable: {exc})") from exc
                if not isinstance(query, str) or not isinstance(document, str):
                    raise ValueError(f"{path}:{lineno}: query and document must be strings")
                pairs.append((query, document))
            else:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    raise ValueError(f"{path}:{lineno}: expected 'query<TAB>document'")
                pairs.append((parts[0], parts[1]))
    if not pairs:
        raise ValueError(f"{path} holds no pairs")
    return pairs
