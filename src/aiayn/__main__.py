"""`python -m aiayn …` (and `torchrun -m aiayn train …`) is the `aiayn` command."""

from aiayn.cli import main

if __name__ == "__main__":
    main()
