"""Small helpers every part uses: errors and exit codes, atomic files, the data home."""
