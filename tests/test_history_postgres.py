"""The history store on a real PostgreSQL server (Debian's `postgresql`, which `.ci/run` installs): the
test run starts its own throwaway cluster on 127.0.0.1 and stops it. The store tests of test_history.py
run here again, unchanged, against it (writers racing for one chat among them).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from krishna_ai.history.schema import Base
from krishna_ai.history.store import HistoryStore
from tests.conftest import free_port
from tests.test_history import (  # noqa: F401 - collected again here, with this module's `store` fixture
    test_a_chat_keeps_its_messages_in_order_with_what_made_them,
    test_a_malformed_import_is_refused_with_a_clear_message_and_writes_nothing,
    test_a_search_too_long_is_refused_clearly,
    test_an_image_for_another_users_chat_is_never_written,
    test_an_unknown_and_a_foreign_chat_read_the_same,
    test_another_users_chat_is_refused,
    test_deleting_a_chat_removes_its_images_unless_another_message_uses_them,
    test_export_import_round_trip,
    test_feedback_export_into_an_existing_folder_keeps_what_else_is_there,
    test_feedback_export_writes_sft_and_dpo_files_the_pipeline_reads,
    test_images_are_copied_into_the_data_folder_and_capped,
    test_images_are_decoded_re_encoded_and_named_by_the_server,
    test_listing_search_rename_delete,
    test_migrations_build_exactly_the_schema_the_code_uses,
    test_odd_message_ids_are_unknown_ids_not_crashes,
    test_replies_without_a_preference_make_no_pairs,
    test_retry_hides_the_old_reply_and_undo_removes_the_turn,
    test_search_finds_words_in_any_case_and_part_and_forgets_what_is_gone,
    test_stopped_cut_and_imported_replies_are_not_training_targets,
    test_undo_and_retry_by_id_act_only_on_the_last_turn,
    test_writers_racing_for_one_chat_each_get_their_own_place,
)

pytestmark = pytest.mark.slow


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


BIN = _bindir()
if BIN is None:
    pytest.skip("no PostgreSQL server (apt-get install postgresql)", allow_module_level=True)


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, run it as Debian's `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def server_url():
    root = Path(tempfile.mkdtemp(prefix="krishna-pg-"))  # not under pytest's 0700 folders: postgres must reach it
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run(_as_postgres([str(BIN / "initdb"), "-D", str(data), "-U", "krishna", "--auth=trust",
                                 "--encoding=UTF8", "--no-sync"]), check=True, capture_output=True)
    subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                                 "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                                 "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://krishna@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store(server_url, tmp_path):
    s = HistoryStore(server_url, data_dir=tmp_path / "data")
    yield s
    with s.engine.begin() as conn:  # each test starts from an empty database
        tables = ", ".join([*Base.metadata.tables, "alembic_version"])  # every table the migrations make
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {tables} CASCADE")
    s.close()


def test_it_is_really_postgres(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version()").scalar().startswith("PostgreSQL")
