"""What importing the operator module adds to DAG parsing, on top of ``airflow.sdk``.

Each sample is a fresh interpreter that imports ``airflow.sdk`` (which every DAG file
pays anyway), then the operator module, timing only the second import.

    .venv/bin/python benchmarks/bench_import.py --samples 30
    .venv/bin/python -X importtime -c \
        "import airflow.sdk; import airflow_provider_feishu_hire.operators.referral_account"
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

PROBE = """
import time
import airflow.sdk
started = time.perf_counter()
import airflow_provider_feishu_hire.operators.referral_account
print((time.perf_counter() - started) * 1000)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    samples = [
        float(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout)
        for _ in range(args.samples)
    ]
    print("| samples | median ms | p90 ms | max ms |")
    print("|---:|---:|---:|---:|")
    p90 = statistics.quantiles(samples, n=10)[-1]
    print(f"| {args.samples} | {statistics.median(samples):.1f} | {p90:.1f} | {max(samples):.1f} |")


if __name__ == "__main__":
    main()
