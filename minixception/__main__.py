"""``python -m minixception {train,summary,ablate} ...``"""
import sys

from .cli import main

sys.exit(main())
