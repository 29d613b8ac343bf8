import sys

from heater.cli import main

sys.exit(main())
