from rl4lms.metrics.base import BaseMetric, MetricResult

__all__ = ["BaseMetric", "MetricResult"]
