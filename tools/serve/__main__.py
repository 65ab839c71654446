"""`python -m tools.serve`: see `tools.serve.command`."""

from tools.serve.command import main

main()
