"""``python -m ordermesh`` is the ``ordermesh`` command."""

from ordermesh.cli import main

main()
