import sys

from logbook.cli import main

sys.exit(main())
