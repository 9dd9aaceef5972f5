"""Evaluation: the resumable experiment matrix, its results database, and the metrics.

``advlab.evaluation.run(config)`` evaluates models x defenses x attacks on a data set into
``runs/advlab.sqlite``: plan (config -> cells, shards) -> execute (inline, processes, Ray)
-> measure (one shard) -> store (one writer). :func:`collect` turns a stored run into
numbers (results.json), which :mod:`advlab.report` renders.
"""
from advlab.evaluation import metrics  # noqa: F401
from advlab.evaluation.config import (  # noqa: F401
    DEFAULT_TOML,
    AttackSpec,
    DataSpec,
    ExecutionSpec,
    ModelSpec,
    PluginSpec,
    RunConfig,
    config_from_dict,
    load_config,
    parse_config,
)
from advlab.evaluation.execute import Executor, Inline, Processes  # noqa: F401
from advlab.evaluation.records import atomic_write, cell_key  # noqa: F401
from advlab.evaluation.results import collect, write_results  # noqa: F401
from advlab.evaluation.runner import Progress, run  # noqa: F401
from advlab.evaluation.store import Store  # noqa: F401
