"""Entry point: see diffatlas/cli/segment.py."""

from diffatlas.cli.segment import main

if __name__ == "__main__":
    main()
