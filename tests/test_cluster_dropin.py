"""systemd/cluster.conf, the drop-in docs/cluster.md installs on every member, configures what it says."""

from pathlib import Path

from memosd.config import load_config

DROPIN = Path(__file__).resolve().parents[1] / "systemd" / "cluster.conf"


def settings() -> dict[str, str]:
    found = {}
    for line in DROPIN.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line[len("Environment="):].partition("=")
            found[name] = value
    return found


def test_the_cluster_drop_in_makes_a_member_of_a_cluster_on_postgresql_s3_and_nats(tmp_path):
    env = {k: v for k, v in settings().items() if k.startswith("MEMOSD_")}
    config = load_config({"data_dir": str(tmp_path)}, env=env)
    assert config.vault_url.startswith("postgresql://") and "sslmode=verify-full" in config.vault_url
    assert config.blob_url == "s3://team-memory/memosd" and config.s3_endpoint_url.startswith("https://")
    assert config.bus_url == "tls://nats.internal:4222"


def test_its_secrets_come_from_credentials_not_from_the_unit():
    text, env = DROPIN.read_text(), settings()
    assert env["PGPASSFILE"] == "%d/pgpass" and env["AWS_SHARED_CREDENTIALS_FILE"] == "%d/aws-credentials"
    assert "LoadCredential=pgpass:" in text and "LoadCredential=aws-credentials:" in text
    assert not any("password" in v.lower() or "secret" in v.lower() for v in env.values())
