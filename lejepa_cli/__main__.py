"""`python -m lejepa_cli ...`, which is also how torchrun starts it."""

from lejepa_cli.cli import main

if __name__ == "__main__":
    main()
