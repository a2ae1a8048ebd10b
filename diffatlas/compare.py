"""Entry point: see diffatlas/cli/compare.py."""

from diffatlas.cli.compare import main

if __name__ == "__main__":
    main()
