"""a node knows its machine (hardware_id, host_id) and can be retired (retired_at, retired_by); a node's
name is unique among its member's nodes in service only, so a retired node's name can be used again

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0001 made (member_id, name) unique without naming the constraint: this convention names it, on
# SQLite (reflected by batch mode) as PostgreSQL does, so that it can be dropped
UNNAMED = {"uq": "%(table_name)s_%(column_0_N_name)s_key"}
IN_SERVICE = sa.text("retired_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table('node', schema=None, naming_convention=UNNAMED) as batch_op:
        batch_op.add_column(sa.Column('hardware_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('host_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('retired_by', sqlmodel.sql.sqltypes.AutoString(length=160), nullable=True))
        batch_op.drop_constraint('node_member_id_name_key', type_='unique')
    op.create_index(
        'uq_node_member_name',
        'node',
        ['member_id', 'name'],
        unique=True,
        sqlite_where=IN_SERVICE,
        postgresql_where=IN_SERVICE,
    )


def downgrade() -> None:
    # a retired node may share its name with a node in service: it takes a name of its own first
    node = sa.table('node', sa.column('id', sa.Integer()), sa.column('name', sa.String()), sa.column('retired_at'))
    short = sa.func.substr(node.c.name, 1, 100, type_=sa.String())
    retired_name = short + '~retired-' + sa.cast(node.c.id, sa.String())
    op.execute(node.update().where(node.c.retired_at.is_not(None)).values(name=retired_name))
    op.drop_index('uq_node_member_name', table_name='node')
    with op.batch_alter_table('node', schema=None, naming_convention=UNNAMED) as batch_op:
        batch_op.create_unique_constraint('node_member_id_name_key', ['member_id', 'name'])
        batch_op.drop_column('retired_by')
        batch_op.drop_column('retired_at')
        batch_op.drop_column('host_id')
        batch_op.drop_column('hardware_id')
