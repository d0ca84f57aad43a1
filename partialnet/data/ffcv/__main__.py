"""``python -m partialnet.data.ffcv``: see :mod:`partialnet.data.ffcv.cli`."""
import sys

from partialnet.data.ffcv.cli import main

sys.exit(main())
