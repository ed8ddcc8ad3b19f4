import sys

from diffreid.cli import main

sys.exit(main())
