"""Files that ship with the code (migrations, alembic.ini), found relative to the package."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = ROOT / "alembic.ini"
