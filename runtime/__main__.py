"""``python -m runtime`` is the same CLI as ``python -m runtime.run``."""

import sys

from runtime.run import main

sys.exit(main())
