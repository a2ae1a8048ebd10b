"""Entry point: see diffatlas/cli/prepare.py."""

from diffatlas.cli.prepare import main

if __name__ == "__main__":
    main()
