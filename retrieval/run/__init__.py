"""The run layer: a run folder's paths (:mod:`.layout`), its results (:mod:`.store`), the session a
notebook works through (:mod:`.session`), running the notebooks (:mod:`.notebooks`, :mod:`.sweep`);
``python -m retrieval.run`` is its command line."""

from .layout import RunLayout
from .session import Run
from .store import list_ranks, load_metrics, load_ranks, ranks_path, record_metrics, record_ranks, summary_table

__all__ = ["Run", "RunLayout", "list_ranks", "load_metrics", "load_ranks", "ranks_path", "record_metrics",
           "record_ranks", "summary_table"]
