"""``python -m reclaim``: the same as the ``reclaim`` command."""

from reclaim._cli import main

main()
