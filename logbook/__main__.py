import sys

from midflight.logbook.cli import main

sys.exit(main())
