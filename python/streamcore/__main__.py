"""``python -m streamcore``: the command line (see ``streamcore.cli``)."""

from streamcore.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
