"""The `tessera` command line: thin commands that parse flags, call the library, print and
exit with a meaningful code (0 ok, 1 failed or not matching, 2 bad input)."""
