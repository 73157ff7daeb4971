#!/usr/bin/env python3
"""Run the shared rig's measure.py with namespace names of our own.

measure.py (shared/tools/perf-rig) names its namespaces ``sfA``/``sfB`` in module constants;
this wrapper loads it from the shared folder, points those constants at ``RIG_NS_A`` /
``RIG_NS_B`` (the names rig.sh used), and runs its ``main()`` with our command line.  Used by
bench/run.sh; nothing is copied from the shared folder into the repo.

  RIG_NS_A=a RIG_NS_B=b [RIG_QUIET_MAX=secs] rig_measure.py SHARED_RIG_DIR measure.py-arguments...
"""

from __future__ import annotations

import importlib.util
import os
import sys


def main() -> None:
    rig_dir = sys.argv[1]
    spec = importlib.util.spec_from_file_location("measure", os.path.join(rig_dir, "measure.py"))
    assert spec is not None and spec.loader is not None
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    measure.NS_A = os.environ.get("RIG_NS_A", measure.NS_A)
    measure.NS_B = os.environ.get("RIG_NS_B", measure.NS_B)
    # On a shared machine the wait for quiet (120 s at most per point) can dominate the run;
    # RIG_QUIET_MAX shortens it (each point still records the foreign load it saw).
    quiet_max = os.environ.get("RIG_QUIET_MAX")
    if quiet_max:
        limit_pct, _ = measure.wait_quiet.__defaults__
        measure.wait_quiet.__defaults__ = (limit_pct, float(quiet_max))
    sys.argv = ["measure.py"] + sys.argv[2:]
    measure.main()


if __name__ == "__main__":
    main()
