"""`python -m digitlab` is the same as the `digitlab` command."""

import sys

from digitlab.cli import main

sys.exit(main())
