"""Every DurableConfig option given in settings.CELERY_DURABLE is the one DjangoDurable uses, down to
the store it opens (``durability`` used to reach the config but not the PostgreSQL store)."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from celery_durable import PayloadTooLarge


def test_every_option_of_the_setting_is_honoured(durable: Any) -> None:
    given = {key: value for key, value in settings.CELERY_DURABLE.items() if key != "database"}
    assert {key: getattr(durable.config, key) for key in given} == given


def test_the_store_is_opened_with_the_configured_durability_and_pool(durable: Any) -> None:
    store = durable.store
    if durable.store.engine.dialect.name == "postgresql":
        # "relaxed": step checkpoints commit with synchronous_commit=off (the store's own flag for it).
        assert store.relaxed is True
    assert store.engine.pool.size() == 3  # engine_options reach the store's one pool


def test_max_payload_from_the_setting_refuses_a_larger_message(durable: Any, order_id: str) -> None:
    with pytest.raises(PayloadTooLarge, match="100000"):
        durable.send(order_id, "x" * 100_001, create_mailbox=True)
