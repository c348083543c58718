"""The study's merge-and-score units (jobs.units) as Ray tasks (`num_gpus=1` per task when the cluster has
GPUs), driven by jobs.unit_driver: workers compute and return plain data; the driver (the job) alone writes
DuckDB, as soon as each result arrives. Each Ray worker process keeps one resident base model across the
tasks it runs. For a remote cluster (`ray_address`), MergeLab and the checkpoints must be reachable at the
same paths on every node.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jobs.context import JobContext
from jobs.errors import JobError
from jobs.unit_driver import run_study_units


def _init_ray(params: dict[str, Any]):
    import ray

    if ray.is_initialized():
        return ray
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        k: os.environ[k]
        for k in ("MERGELAB_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
        if k in os.environ
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "include_dashboard": False,
        "log_to_driver": False,
    }
    if params.get("ray_address"):
        kwargs["address"] = params["ray_address"]
    elif params.get("ray_num_cpus"):
        kwargs["num_cpus"] = int(params["ray_num_cpus"])
    try:
        ray.init(**kwargs)
    except Exception as exc:
        raise JobError(f"Cannot start or reach Ray ({params.get('ray_address') or 'local'}): {exc}") from exc
    return ray


class RayExecutor:
    """jobs.unit_driver's executor on Ray: one task per unit (`num_gpus=1` each when the cluster has GPUs)."""

    def __init__(self, ray) -> None:
        self.ray = ray
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        self.options = {"num_cpus": 1, "num_gpus": gpus, "max_retries": 0}
        self.where = f"Ray (num_gpus={gpus} per unit)"
        self._remote = {}

    def submit(self, fn, *args):
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(fn).options(**self.options)
        return self._remote[fn].remote(*args)

    def wait(self, handles, timeout: float):
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        return ready

    def result(self, handle):
        return self.ray.get(handle)

    def cancel(self, handles) -> None:
        for handle in handles:
            self.ray.cancel(handle, force=True)

    def close(self) -> None:
        pass


def run_study_ray(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    executor = RayExecutor(_init_ray(params))
    return run_study_units(ctx, params, executor)
