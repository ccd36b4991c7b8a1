"""`python -m bench.results`: the real-data study and its generated tables (bench/study/).

See `bench.study.run` for the steps and options; the tables and figures go to
docs/results/, the hand-written findings are docs/results.md.
"""

from __future__ import annotations

import sys

from bench.study.run import main

if __name__ == "__main__":
    sys.exit(main())
