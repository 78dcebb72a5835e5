"""``python -m deeprebirth.cli``: the `rebirth` command."""
from . import main

main(prog_name="rebirth")
