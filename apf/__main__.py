import sys

from apf.cli import main

sys.exit(main())
