"""``python -m client`` is ``upscaler-client``."""

import sys

from client.cli import main

sys.exit(main())
