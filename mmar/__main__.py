"""`python -m mmar <command> ...`: the same as the `mmar` console script."""
import sys

from mmar.cli import main

sys.exit(main())
