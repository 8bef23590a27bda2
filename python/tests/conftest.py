"""The package from this checkout (python/), whichever directory pytest runs in; and one PASS or FAIL line per
test, the lines `make test` counts (tests/counted.sh)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.outcome == "skipped":
            return
        sys.stdout.write("\n%s python %s\n" % ("PASS" if report.outcome == "passed" else "FAIL", report.nodeid))
        sys.stdout.flush()
