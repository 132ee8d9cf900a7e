"""`python -m fxforge.cli ...`: the same as the `fxforge` console script."""

import sys

from fxforge.cli.app import main

sys.exit(main())
