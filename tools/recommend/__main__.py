"""`python -m tools.recommend`: see `tools.recommend.command`."""

from tools.recommend.command import main

main()
