"""The service's Prometheus metrics, exported by Ray's metrics agent (``ray.util.metrics``; names get Ray's
``ray_`` prefix on the node's metrics port)."""
from __future__ import annotations


class ServiceMetrics:
    """Job outcomes, queue length, kept ratio and adapter residency; one instance per replica."""

    def __init__(self, deployment: str):
        from ray.util import metrics

        tags = {"deployment": deployment}
        self.jobs = metrics.Counter("diffreid_jobs", description="jobs by event: started, done, failed",
                                    tag_keys=("deployment", "event"))
        self.queued = metrics.Gauge("diffreid_jobs_queued", description="jobs queued or running (the store's queue)",
                                    tag_keys=("deployment",))
        self.kept_ratio = metrics.Histogram("diffreid_kept_ratio", description="share of a job's images the filter "
                                            "kept", boundaries=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                            tag_keys=("deployment",))
        self.adapters = metrics.Counter("diffreid_adapters", description="identity adapters loaded or evicted by "
                                        "the generator", tag_keys=("deployment", "event"))
        for metric in (self.jobs, self.queued, self.kept_ratio, self.adapters):
            metric.set_default_tags(tags)

    def job(self, event: str, state: dict | None = None) -> None:
        """``event``: started, done or failed; a finished job also records its kept ratio."""
        self.jobs.inc(tags={"event": event})
        counts = (state or {}).get("counts") or {}
        total = counts.get("kept", 0) + counts.get("dropped", 0)
        if event == "done" and total:
            self.kept_ratio.observe(counts["kept"] / total)

    def queue_length(self, n: int) -> None:
        self.queued.set(n)

    def adapter(self, event: str, n: int = 1) -> None:
        if n > 0:
            self.adapters.inc(n, tags={"event": event})
