"""rerankrt.engine.offline — files in, files out: scoring (``rerankrt score``: streaming, resumable, loss-free)
and evaluating reranked runs (``rerankrt eval``, :mod:`.evaluate`)."""

from .records import Fields
from .runner import ScoreJob, Summary, score_file, score_file_with_artifact
from .scoring import ChunkScorer

__all__ = ["Fields", "ScoreJob", "Summary", "score_file", "score_file_with_artifact", "ChunkScorer"]
