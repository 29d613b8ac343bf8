"""``python -m adapters.i2c``: run the I2C relay adapter."""

import sys

from adapters.i2c.service import main

sys.exit(main())
