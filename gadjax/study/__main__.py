"""``python -m gadjax.study``: the study's command line (gadjax.study.cli)."""

import sys

from gadjax.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
