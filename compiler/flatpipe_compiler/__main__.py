"""python3 -m flatpipe_compiler: see cli.py."""
import sys

from .cli import main

sys.exit(main())
