"""`python -m monitor.simulator`."""

from monitor.simulator.cli import main

main()
