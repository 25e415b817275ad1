"""Run by the Python of a side environment with rliable 1.2 (see .ci/run): reads score arrays as JSON
on stdin, prints rliable's estimates as JSON. Not a test module; it never imports rl4lms."""
import json
import sys

import numpy as np
from rliable import library, metrics


def main() -> None:
    request = json.load(sys.stdin)
    scores = {label: np.array(s) for label, s in request["scores"].items()}
    eligible = {label: scores[label] for label in request["eligible"]}
    answer = {}
    for name, function in (("IQM", metrics.aggregate_iqm), ("mean", metrics.aggregate_mean)):
        np.random.seed(request["seed"])
        points, intervals = library.get_interval_estimates(eligible, lambda s, f=function: np.array([f(s)]),
                                                           reps=request["reps"])
        answer[name] = {k: [float(points[k][0]), *map(float, intervals[k].ravel())] for k in eligible}
    pairs = {f"{x},{y}": (scores[x], scores[y]) for x, y in request["pairs"]}
    np.random.seed(request["seed"])
    points, intervals = library.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=request["reps"])
    answer["probability_of_improvement"] = {k: [float(points[k]), *map(float, intervals[k].ravel())] for k in pairs}
    np.random.seed(request["seed"])
    profiles, bands = library.create_performance_profile(eligible, np.array(request["thresholds"]),
                                                         reps=request["profile_reps"])
    answer["profiles"] = {k: {"fraction": profiles[k].tolist(), "interval": bands[k].tolist()} for k in eligible}
    answer["curves"] = {}
    for label, curve in request["curves"].items():  # (seeds, iterations); each curve is bootstrapped on its own
        np.random.seed(request["seed"])
        means, bands = library.get_interval_estimates({label: np.array(curve)}, lambda s: s.mean(axis=0),
                                                      reps=request["profile_reps"])
        answer["curves"][label] = {"mean": means[label].tolist(), "interval": bands[label].tolist()}
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
