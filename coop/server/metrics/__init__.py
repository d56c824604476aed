"""Prometheus metrics: ledger gauges computed at scrape time (:mod:`.collector`), the scheduler's
counters and histograms (:mod:`.scheduler`), and the ``/metrics`` route (:mod:`.endpoint`)."""

from coop.server.metrics.scheduler import scheduler_metrics

__all__ = ["scheduler_metrics"]
