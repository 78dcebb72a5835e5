"""``python -m deeprebirth.cli``: the `rebirth` command."""
from deeprebirth.cli import main

if __name__ == "__main__":  # a spawned child (engine/isolate.py) imports this as __mp_main__
    main(prog_name="rebirth")
