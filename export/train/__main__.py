"""``python -m export.train``: see :mod:`export.train.cli`."""

import sys

from export.train.cli import main

sys.exit(main())
