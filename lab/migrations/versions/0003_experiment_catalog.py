"""experiment catalog: tags, a note, and where an experiment came from

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 10:00:00.000000

Existing experiments get an empty tag list, an empty note and origin "local" from the server defaults, so the
upgrade keeps every row and needs no data step. `imported_from` stays NULL for them (only a report import sets it).
The defaults are plain strings, not sa.text(): with an expression default Alembic rebuilds the SQLite table
(copy, drop, rename) instead of a plain ALTER TABLE ADD COLUMN, a needless risk on a database a worker writes to.
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tags', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('note', sa.Text(), server_default='', nullable=False))
        batch_op.add_column(sa.Column('origin', sa.String(length=20), server_default='local',
                                      nullable=False))
        batch_op.add_column(sa.Column('imported_from', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_column('imported_from')
        batch_op.drop_column('origin')
        batch_op.drop_column('note')
        batch_op.drop_column('tags')
