"""Import path kept for scripts written before the int8 passes moved to ``export/passes/``.

The passes themselves: ``passes/int8_static.py``, ``passes/int8_dynamic.py`` and the node
selection they share, ``passes/matmuls.py``. New code imports from there.
"""

from __future__ import annotations

from .passes.int8_dynamic import quantize_int8_dynamic
from .passes.int8_static import _BatchReader, quantize_int8_static
from .passes.matmuls import select_nodes, weight_matmuls

__all__ = ["_BatchReader", "quantize_int8_dynamic", "quantize_int8_static", "select_nodes", "weight_matmuls"]
