"""``python -m simulator``: run the simulated heater hardware."""

from simulator.app import main

raise SystemExit(main())
