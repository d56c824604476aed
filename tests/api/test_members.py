"""Members, quotas, grants and the balance with its history."""

from __future__ import annotations

import pytest

from coop.client import CoopError
from tests.conftest import Coordinator


def test_members_quota_and_grants(coordinator: Coordinator) -> None:
    admin = coordinator.admin
    created = admin.create_member("lab-a", share=2.0)
    assert created["token"].startswith("coop_") and created["share"] == 2.0
    with pytest.raises(CoopError) as err:
        admin.create_member("lab-a")
    assert err.value.status == 409 and err.value.errors[0]["field"] == "name"
    assert admin.set_quota("lab-a", gpu_cap=4)["gpu_cap"] == 4
    assert admin.set_quota("lab-a", gpu_cap=None)["gpu_cap"] is None
    admin.grant("lab-a", 10, note="welcome")
    admin.grant("lab-a", -2.5)
    bal = admin.balance("lab-a", history=True)
    assert bal["balance"] == pytest.approx(7.5)
    assert [e["amount"] for e in bal["history"]] == [-2.5, 10]
    assert bal["history"][1]["note"] == "welcome" and bal["history"][1]["kind"] == "grant"
    assert {m["name"]: m["balance"] for m in admin.members()}["lab-a"] == pytest.approx(7.5)


def test_bad_member_input_names_the_field(coordinator: Coordinator) -> None:
    admin = coordinator.admin
    with pytest.raises(CoopError) as err:
        admin.create_member("bad name!")
    assert err.value.status == 422 and err.value.errors[0]["field"] == "name"
    with pytest.raises(CoopError) as err:
        admin.request("POST", "/members", json={"name": "x", "shares": 2})
    assert err.value.errors[0]["field"] == "shares" and "remove" in err.value.errors[0]["fix"]
    with pytest.raises(CoopError) as err:
        admin.set_quota("nobody", gpu_cap=1)
    assert err.value.status == 404
    assert [m["name"] for m in admin.members()] == ["admin"]
