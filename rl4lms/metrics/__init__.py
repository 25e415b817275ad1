from rl4lms.metrics.base import BaseMetric, MetricOutputError, MetricResult

__all__ = ["BaseMetric", "MetricOutputError", "MetricResult"]
