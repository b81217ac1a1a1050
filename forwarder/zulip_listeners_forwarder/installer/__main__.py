"""``python3 -m zulip_listeners_forwarder.installer``: see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
