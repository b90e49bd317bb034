"""`python -m hydraopt ARGS...` runs the hydraopt command line."""
from hydraopt._cli import main

main()
