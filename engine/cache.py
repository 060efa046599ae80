"""Where rerankrt keeps what it learns about a machine: ``$RERANKRT_CACHE``, else ``~/.cache/rerankrt``.

One place for the root, so the OpenVINO compile cache, the int8 check's verdicts and the measured
``auto`` decisions always live side by side (and one variable moves them all).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("RERANKRT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rerankrt"))
