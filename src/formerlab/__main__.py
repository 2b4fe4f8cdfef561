"""``python -m formerlab`` (and ``torchrun -m formerlab``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
