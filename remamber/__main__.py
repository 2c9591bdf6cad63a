"""``python -m remamber`` runs the command-line tool."""

from remamber.cli.main import main

if __name__ == "__main__":
    main()
