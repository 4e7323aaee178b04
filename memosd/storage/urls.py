"""Storage URLs: which engine a vault_url names, and the URL as it may be shown (its password replaced)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from memosd.errors import InvalidArgument

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
HIDDEN = "***"
_PG_SCHEMES = ("postgresql", "postgres")


def vault_engine(url: str) -> str:
    """The engine a vault_url names: "sqlite" (`sqlite:`, the data directory) or "postgresql"."""
    if url == "sqlite:":
        return SQLITE
    if urlsplit(url).scheme in _PG_SCHEMES and url.split(":", 1)[1].startswith("//"):
        return POSTGRESQL
    raise InvalidArgument(f"vault_url {redact(url)!r}: use sqlite: (the data directory) or"
                          " postgresql://USER@HOST:PORT/DB")


def check_blob_url(url: str) -> None:
    if url != "file:" and not url.startswith("s3://"):
        raise InvalidArgument(f"blob_url {redact(url)!r}: use file: (the data directory) or s3://BUCKET/PREFIX")


def redact(url: str) -> str:
    """The URL with any password (user:PASSWORD@ or ?password=) replaced by ***: what logs and messages show."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(//[^/@:]*:)[^@/]*@", rf"\1{HIDDEN}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{hostinfo}"
    query = re.sub(r"(?i)((?:^|&)password=)[^&]*", rf"\g<1>{HIDDEN}", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, url: str) -> str:
    """text (an error message, say) with the URL's password, wherever it appears, replaced by ***."""
    for secret in _passwords(url):
        text = text.replace(secret, HIDDEN)
    return text


def _passwords(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        found = [parts.password, unquote(parts.password)] if parts.password else []
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    except ValueError:
        return []
    return found
