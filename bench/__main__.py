"""`python -m bench ...` runs the benchmark CLI (bench/run.py)."""

from bench.run import main

raise SystemExit(main())
