import sys

from cluster.ops.cli import main

sys.exit(main())
