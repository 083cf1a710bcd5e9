import sys

from shardroute.cli import main

sys.exit(main())
