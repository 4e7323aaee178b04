"""`python -m memos_client.cli` runs memosctl."""

import sys

from memos_client.cli.app import main

sys.exit(main())
