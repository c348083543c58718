"""The Store class: every record type's typed read/write functions on one connection."""

from __future__ import annotations

from store.analyses import AnalysesMixin
from store.evals import EvalsMixin
from store.geometry import GeometryMixin
from store.jobs import JobsMixin
from store.merges import MergesMixin
from store.models import ModelsMixin
from store.studies import StudiesMixin


class Store(ModelsMixin, MergesMixin, EvalsMixin, AnalysesMixin, GeometryMixin, JobsMixin, StudiesMixin):
    """MergeLab's results database (`$MERGELAB_HOME/mergelab.duckdb` unless a path is given).

    One per process. Reads return DataFrames (for the pages) or plain dicts/records (for code);
    writes are serialized by a lock and safe to call from worker threads.
    """
