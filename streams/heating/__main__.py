"""``python -m streams.heating --target C``: run one heating job."""

import sys

from streams.heating.job import main

sys.exit(main())
