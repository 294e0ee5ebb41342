"""``python -m fastft`` (also what ``accelerate launch -m fastft train …`` runs)."""
import sys

from .cli import main

sys.exit(main())
