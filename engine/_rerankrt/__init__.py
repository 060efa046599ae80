"""rerankrt: the top-level package, for its version only.

The runtime is ``rerankrt.engine`` (torch-free) and the exporter ``rerankrt.export``; this package
imports neither, so ``import rerankrt`` costs nothing. It lives in ``engine/_rerankrt/`` (mapped in
``pyproject.toml``) so that the repository's top level keeps its four folders.
"""

from importlib import metadata

try:
    __version__ = metadata.version("rerankrt")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
