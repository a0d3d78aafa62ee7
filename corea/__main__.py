import sys

from corea.cli import main

sys.exit(main())
