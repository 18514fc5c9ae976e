"""``python -m attend.cli``: the ``attend`` command."""
import sys

from . import main

sys.exit(main())
