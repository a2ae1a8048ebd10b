"""Entry point: see diffatlas/cli/test.py."""

from diffatlas.cli.test import main

if __name__ == "__main__":
    main()
