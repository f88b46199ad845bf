"""``python -m gemma_lab``: the same as the ``gemma-lab`` command (see ``gemma_lab.cli``)."""

import sys

from gemma_lab.cli import main

sys.exit(main())
