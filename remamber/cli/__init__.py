"""The ``remamber`` command line: one thin module per command."""
