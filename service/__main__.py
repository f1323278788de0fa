"""``python -m service`` is the ``attnserve`` console script."""

import sys

from service.cli import main

sys.exit(main())
