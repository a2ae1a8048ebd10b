"""Entry point: see diffatlas/cli/train.py."""

from diffatlas.cli.train import main

if __name__ == "__main__":
    main()
