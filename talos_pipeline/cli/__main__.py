import sys

from talos_pipeline.cli import main

sys.exit(main())
