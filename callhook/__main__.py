import sys

from callhook.cli import main

sys.exit(main())
