"""the ledger holds only finite, bounded amounts; a pause set from the coordinator survives heartbeats

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept in step with coop.server.models.LedgerEntry: NaN and +/-inf fail both comparisons.
AMOUNT_CHECK = 'amount >= -1000000000000 AND amount <= 1000000000000'
GPU_HOURS_CHECK = 'gpu_hours >= -1000000000000 AND gpu_hours <= 1000000000000'


def upgrade() -> None:
    with op.batch_alter_table('ledgerentry', schema=None) as batch_op:
        batch_op.create_check_constraint('ck_ledgerentry_amount_finite', AMOUNT_CHECK)
        batch_op.create_check_constraint('ck_ledgerentry_gpu_hours_finite', GPU_HOURS_CHECK)
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.add_column(sa.Column('coordinator_paused', sa.Boolean(), nullable=False, server_default=sa.false()))
    # a pause set through the API before this revision said so only in its reason
    op.execute("UPDATE node SET coordinator_paused = paused WHERE reclaim_reason = 'paused from the coordinator'")


def downgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_column('coordinator_paused')
    with op.batch_alter_table('ledgerentry', schema=None) as batch_op:
        batch_op.drop_constraint('ck_ledgerentry_gpu_hours_finite', type_='check')
        batch_op.drop_constraint('ck_ledgerentry_amount_finite', type_='check')
