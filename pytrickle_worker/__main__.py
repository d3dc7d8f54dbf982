import sys

from pytrickle_worker.cli import main

sys.exit(main())
