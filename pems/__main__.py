import sys

from pems.cli import main

sys.exit(main())
