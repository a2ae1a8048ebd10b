"""Entry point: see diffatlas/cli/splits.py."""

from diffatlas.cli.splits import main

if __name__ == "__main__":
    main()
