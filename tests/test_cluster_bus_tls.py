"""A tls:// bus URL means TLS or nothing: a real nats-server with TLS is reached through the CA the daemon's
bus_tls_ca names; a plain one (or a man in the middle rewriting the server's INFO line) is refused, never used in
plaintext."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from memosd.cluster.bus import Bus
from memosd.config import load_config
from tests.certs import self_signed
from tests.nats_server import NatsServer
from tests.timing import until

VAULT = "postgresql://memosd@127.0.0.1:5432/memosd"


def _bus(url: str, ca: Path) -> Bus:
    # The options as the daemon takes them: from its configuration (MEMOSD_BUS_TLS_CA here).
    cfg = load_config({"vault_url": VAULT, "bus_url": url}, env={"MEMOSD_BUS_TLS_CA": str(ca)})
    assert cfg.bus_tls_ca == str(ca)
    return Bus(cfg.bus_url, "memosd-c1", poll_interval=0.5, tls_ca=cfg.bus_tls_ca, tls_cert=cfg.bus_tls_cert,
               tls_key=cfg.bus_tls_key)


@pytest.fixture
def servers(tmp_path):
    cert, key = self_signed(tmp_path, "bus", ca=True)
    secure, plain = NatsServer(tls=(cert, key)), NatsServer()
    secure.start()
    try:
        plain.start()
        try:
            yield cert, secure, plain
        finally:
            plain.kill()
    finally:
        secure.kill()


def test_a_tls_bus_reaches_a_tls_server_through_the_configured_ca(servers):
    ca, secure, _plain = servers

    async def main():
        a, b = _bus(f"tls://127.0.0.1:{secure.port}", ca), _bus(f"tls://127.0.0.1:{secure.port}", ca)
        heard: list = []
        b.on("topic", heard.append)
        await a.start()
        await b.start()
        try:
            assert a.connected and b.connected, (a.describe(), b.describe())
            assert a._nc._transport._io_writer.get_extra_info("ssl_object") is not None  # TLS on the wire
            a.notify("topic", {"seq": 1})
            try:
                await until(lambda: _true(heard == [{"seq": 1}]), "the notice never crossed the TLS bus")
            except AssertionError as exc:  # seen once under load (session 15): say where the notice stopped
                raise AssertionError(f"{exc}; a sent {a.sent}, b received {b.received}, heard {heard};"
                                     f" a: {a.describe()}; b: {b.describe()}") from None
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_a_tls_url_answered_by_a_plain_server_is_refused_not_used_in_plaintext(servers, caplog):
    ca, _secure, plain = servers

    async def main():
        bus = _bus(f"tls://127.0.0.1:{plain.port}", ca)
        heard: list = []
        bus.on("topic", heard.append)
        with caplog.at_level(logging.ERROR, logger="memosd.cluster"):
            await bus.start()
            try:
                await until(lambda: _true(bool(bus.refused)), "the plain server was never refused")
                assert not bus.connected and not bus.ever_connected
                assert "offers no TLS" in bus.describe() and "catching up from the vault" in bus.describe()
                refusals = [r for r in caplog.records if "offers no TLS" in r.getMessage()]
                assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
                # Nothing it sends gets through in plaintext: a plain client on that server hears nothing.
                import nats

                # Bounded, as every wait here: a step that hangs fails naming itself, not the whole test's timeout.
                spy = await asyncio.wait_for(nats.connect(plain.url, connect_timeout=2, allow_reconnect=False), 20)
                got: list = []

                async def spied(msg) -> None:
                    got.append(msg)

                await spy.subscribe("memosd.>", cb=spied)
                await spy.flush(timeout=10)
                bus.notify("topic", {"seq": 1})
                await spy.publish("memosd.memosd-c1.topic", b'{"seq": 2}')
                await spy.flush(timeout=10)
                await until(lambda: _true(len(got) == 1), "the spy never heard its own probe")
                assert [m.data for m in got] == [b'{"seq": 2}'] and heard == []
                await asyncio.wait_for(spy.close(), 20)
            finally:
                await asyncio.wait_for(bus.close(), 20)

    asyncio.run(main())


async def _true(value: bool) -> bool:
    return value
