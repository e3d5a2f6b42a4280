"""`python -m salad.cli …`: the `salad` command."""

from salad.cli import main

main(prog_name="salad")
