"""bus_url: from the flag, MEMOSD_BUS_URL and the TOML file; checked before the daemon starts."""

from __future__ import annotations

import pytest

from memosd.cli import main
from memosd.cluster.bus import shown
from memosd.config import load_config
from memosd.errors import InvalidArgument

PG = "postgresql://memosd@db.example:5432/memos"


def test_bus_url_comes_from_the_flag_the_variable_and_the_toml_file(tmp_path):
    assert load_config({}, env={}).bus_url == ""
    (tmp_path / "memosd.toml").write_text(f'vault_url = "{PG}"\nbus_url = "nats://127.0.0.1:4222"\n'
                                          "cluster_poll_interval = 2\n")
    from_file = load_config({"data_dir": str(tmp_path)}, env={})
    assert (from_file.bus_url, from_file.cluster_poll_interval) == ("nats://127.0.0.1:4222", 2.0)
    env = {"MEMOSD_BUS_URL": "nats://localhost:4333", "MEMOSD_CLUSTER_POLL_INTERVAL": "0.25"}
    from_env = load_config({"data_dir": str(tmp_path)}, env=env)
    assert (from_env.bus_url, from_env.cluster_poll_interval) == ("nats://localhost:4333", 0.25)
    flags = load_config({"data_dir": str(tmp_path), "bus_url": "tls://nats.example:4222"}, env=env)
    assert flags.bus_url == "tls://nats.example:4222"


def test_a_bus_without_a_postgresql_vault_is_refused_saying_why():
    with pytest.raises(InvalidArgument, match="share a PostgreSQL vault_url.*sqlite:"):
        load_config({"bus_url": "nats://127.0.0.1:4222"}, env={})


@pytest.mark.parametrize("url", ["127.0.0.1:4222", "http://127.0.0.1:4222", "nats://127.0.0.1", "nats://:4222",
                                 "nats://127.0.0.1:42x", "nats://127.0.0.1:4222/x"])
def test_a_bus_url_of_another_form_is_refused(url):
    with pytest.raises(InvalidArgument, match="use nats://HOST:PORT"):
        load_config({"vault_url": PG, "bus_url": url}, env={})


def test_off_loopback_the_bus_needs_tls():
    with pytest.raises(InvalidArgument, match="not loopback.*tls://10.0.0.5:4222"):
        load_config({"vault_url": PG, "bus_url": "nats://10.0.0.5:4222"}, env={})
    both = load_config({"vault_url": PG, "bus_url": "nats://[::1]:4222,tls://10.0.0.5:4222"}, env={})
    assert both.bus_url == "nats://[::1]:4222,tls://10.0.0.5:4222"


def test_a_password_in_the_bus_url_is_never_shown(capsys):
    assert shown("nats://memosd:s3cret@127.0.0.1:4222,tls://tok@h:1") == "nats://127.0.0.1:4222,tls://h:1"
    with pytest.raises(InvalidArgument) as err:
        load_config({"vault_url": PG, "bus_url": "nats://memosd:s3cret@10.0.0.5:4222"}, env={})
    assert "s3cret" not in str(err.value)
    assert main(["serve", "--bus-url", "nats://u:s3cret@127.0.0.1:1"]) == 2
    assert "s3cret" not in capsys.readouterr().err
    assert "s3cret" not in repr(load_config({"vault_url": PG, "bus_url": "nats://u:s3cret@127.0.0.1:1"}, env={}))


def test_the_poll_interval_must_be_positive():
    with pytest.raises(InvalidArgument, match="cluster_poll_interval"):
        load_config({"cluster_poll_interval": "0"}, env={})


@pytest.mark.parametrize("key", ["job_lease", "member_heartbeat_interval", "cluster_poll_interval",
                                 "governance_poll_interval", "sweep_interval"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_an_interval_that_never_or_always_fires_is_refused_naming_the_setting(key, value):
    with pytest.raises(InvalidArgument, match=f"{key} must be a finite number of seconds"):
        load_config({}, env={f"MEMOSD_{key.upper()}": value})
