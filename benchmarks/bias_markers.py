"""The marker study behind docs/experiments.md's ``bias`` section: where does each map find the cue?

Runs ``netvis experiment bias`` (fast setting) for several seeds, marker placements and patterns, and
records for every run whether the network learned the shortcut (accuracy on the cue class's test
images with and without the marker, and how many other images the marker turns into the cue class)
and how often each method's peak lies on the marker. Prints JSON; ``--out`` also writes it to a file.

    OMP_NUM_THREADS=1 python benchmarks/bias_markers.py --seeds 0 1 2 3 4 \\
        --corners top-left center --patterns square checker --out benchmarks/results/bias_markers_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from netvis.app import experiments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--corners", nargs="+", default=["top-left", "center"])
    parser.add_argument("--patterns", nargs="+", default=["square", "checker"])
    parser.add_argument("--methods", nargs="+", default=["occlusion", "gradient", "integrated-gradients"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    runs = []
    for corner in args.corners:
        for seed in args.seeds:
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                result = experiments.run("bias", device="cpu", seed=seed, marker_corner=corner,
                                         marker_patterns=tuple(args.patterns), methods=tuple(args.methods), out=tmp)
            seconds = time.perf_counter() - start
            behaviour = result.tables["behaviour"]
            for pattern in args.patterns:
                rows = [b for b in behaviour if b["marker"] == pattern]
                peaks = {r["method"]: r["peak_on_marker"] for r in result.table if r["marker"] == pattern}
                runs.append({
                    "corner": corner, "pattern": pattern, "seed": seed,
                    "cue_accuracy_clean": rows[1]["accuracy"], "cue_accuracy_marked": rows[2]["accuracy"],
                    "other_to_cue_clean": rows[3]["predicted_as_cue_class"],
                    "other_to_cue_marked": rows[4]["predicted_as_cue_class"],
                    "peak_on_marker": peaks, "seconds": seconds / len(args.patterns),
                })
                print(json.dumps(runs[-1]), flush=True)
    report = {"benchmark": "bias_markers", "setting": "fast", "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
