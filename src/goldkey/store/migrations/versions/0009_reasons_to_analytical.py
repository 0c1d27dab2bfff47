"""churn / propensity reasons leave profile_insights for the analytical store

A scoring run wrote one ``profile_insights`` row per scored profile for its reasons, the largest
part of a 1M-profile run (7-10 s on the writer thread). The reasons now go to the analytical
store's ``profile_reasons`` table, appended through Arrow (goldkey.insight.writeback). The upgrade
deletes the rows the churn model (``churn``) and the propensity models (``propensity_<name>``) left
in ``profile_insights``: they would otherwise stay on the 360° profile, never updated again. The
next run of each model writes its reasons to the new place. The downgrade has nothing to restore:
a model run after it writes them back.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 02:00:00
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM profile_insights WHERE model = 'churn' OR model LIKE 'propensity!_%' ESCAPE '!'")


def downgrade() -> None:
    pass
