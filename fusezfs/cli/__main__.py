"""python -m fusezfs.cli: the `fusezfs` program."""
import sys

from fusezfs.cli import main

sys.exit(main())
