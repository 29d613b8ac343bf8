"""``python -m adapters.can``: run the CAN adapter."""

import sys

from adapters.can.service import main

sys.exit(main())
