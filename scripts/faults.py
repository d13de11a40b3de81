"""Run the fault-injection suite and print its ledger as a table (see scripts/faults).

Exit status: pytest's, so a lost certificate or a failed case fails the script too.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = ["tests/integration/test_faults.py", "tests/integration/test_faults_state.py"]


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "faults.jsonl"
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", *SUITE, *sys.argv[1:]], cwd=REPO,
                                env={**os.environ, "CERTRENEW_FAULTS_REPORT": str(report)})
        elapsed = time.monotonic() - started
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    print(table(rows, elapsed))
    return result.returncode


def table(rows: list[dict], elapsed: float) -> str:
    width = max([len("case"), *(len(row["case"]) for row in rows)])
    lines = [f"{'case':<{width}}  {'runs':>5}  {'certificates lost':>17}  result",
             f"{'-' * width}  {'-' * 5}  {'-' * 17}  ------"]
    for row in rows:
        result = "pass" if row["passed"] else "FAIL"
        lines.append(f"{row['case']:<{width}}  {row['runs']:>5}  {row['lost']:>17}  {result}")
    runs, lost = sum(row["runs"] for row in rows), sum(row["lost"] for row in rows)
    failed = sum(not row["passed"] for row in rows)
    lines.append(f"{'-' * width}  {'-' * 5}  {'-' * 17}  ------")
    lines.append(f"{f'{len(rows)} cases, {failed} failed, in {elapsed:.0f} s':<{width}}  {runs:>5}  {lost:>17}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
