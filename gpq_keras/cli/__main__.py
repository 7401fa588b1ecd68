"""`python -m gpq_keras.cli`: the `gpq` command."""

import sys

from gpq_keras.cli import main

sys.exit(main())
