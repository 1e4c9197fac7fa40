"""`python -m relay` runs the same CLI as the `relay` console script."""

from relay.cli import main

raise SystemExit(main())
