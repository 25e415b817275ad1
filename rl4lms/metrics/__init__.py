from rl4lms.errors import MetricOutputError
from rl4lms.metrics.base import BaseMetric, MetricResult

__all__ = ["BaseMetric", "MetricOutputError", "MetricResult"]
