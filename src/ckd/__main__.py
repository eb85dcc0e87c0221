import sys

from ckd.cli import main

sys.exit(main())
