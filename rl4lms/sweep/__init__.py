"""Benchmark sweeps: grids of runs (``grid``), their parallel execution (``runner``) and reports (``report``)."""
