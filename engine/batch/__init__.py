"""rerankrt.engine.batch — offline scoring of files: streaming, resumable, loss-free (``rerankrt score``)."""

from .records import Fields
from .runner import ScoreJob, Summary, score_file
from .scoring import ChunkScorer

__all__ = ["Fields", "ScoreJob", "Summary", "score_file", "ChunkScorer"]
