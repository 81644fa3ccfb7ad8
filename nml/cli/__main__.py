import sys

from nml.cli.main import main

sys.exit(main())
