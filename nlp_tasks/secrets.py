"""Credentials never reach a message, a log or a file: the secrets in configured URLs, and their redaction."""

from __future__ import annotations

import re

from nlp_tasks.errors import InputError

URL_CREDENTIALS = re.compile(r"([A-Za-z][\w+.-]*://)([^\s/'\"@:]*(?::(?!\d*(?:[/?#'\"\s]|$))[^\s'\"@]*)?)@")
"""`user:password@` (or `token@`) after a URL's scheme; a `:` followed by digits and a slash is a port."""
SECRET_QUERY = re.compile(r"([?&][^=&\s]*(?:sig|token|secret|password|passwd|key|credential|auth)[^=&\s]*=)([^&\s'\"]*)",
                          re.IGNORECASE)
SECRETS: set[str] = set()
"""Credentials the configured URLs carry (`register_secrets`): replaced wherever they appear, URL or not (s3fs,
for one, puts `user:password@bucket` in its errors without the scheme)."""


def register_secrets(text: str) -> None:
    """Remember the credentials of every URL in `text` (a config, a command line), so that `redact` removes them
    from any message, whole or in pieces (an error may cut a secret at a slash)."""
    from urllib.parse import unquote

    for match in URL_CREDENTIALS.finditer(text):
        user, colon, password = match.group(2).partition(":")
        pieces = {match.group(2), f"{user}:{password.split('/')[0]}", password, *password.split("/")} if colon \
            else {user}  # a user name is no secret; a token alone (https://TOKEN@host) is
        SECRETS.update(piece for value in pieces for piece in (value, unquote(value)) if len(piece) >= 4)
    SECRETS.update(value for match in SECRET_QUERY.finditer(text) if len(value := match.group(2)) >= 4)


def redact(text: str) -> str:
    """A path, URL or message without the credentials it may carry: `user:password@` and secret-looking query
    values of any URL in it, and every registered secret.

    Every path that is recorded (row ids, manifest, reports) or printed, and every message, log line and
    traceback the job shows, goes through this.
    """
    text = SECRET_QUERY.sub(r"\1***", URL_CREDENTIALS.sub(r"\1", text))
    for secret in sorted(SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


CREDENTIAL_HINTS = {
    "s3": "as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or the machine's role",
    "gs": "as GOOGLE_APPLICATION_CREDENTIALS or the machine's service account",
    "gcs": "as GOOGLE_APPLICATION_CREDENTIALS or the machine's service account",
    "hf": "as HF_TOKEN",
}
URL_CREDENTIAL_USERS = ("http", "https")
"""Protocols whose filesystem passes the URL, credentials included, to its client as it is."""


def check_credentials(key: str, url: str) -> None:
    """Credentials in a URL must be ones its filesystem uses (ftp://, sftp://, http://); elsewhere (s3://: a
    bucket cannot be named `user:password@bucket`) it is a one-line error naming the URL without them."""
    match = URL_CREDENTIALS.match(url)
    if not match:
        return
    protocol = match.group(1)[:-3].lower()
    if protocol in URL_CREDENTIAL_USERS:
        return
    from fsspec.registry import get_filesystem_class

    try:
        used = {str(value) for value in get_filesystem_class(protocol)._get_kwargs_from_urls(url).values()}
    except Exception:  # noqa: BLE001 - an unknown protocol or a driver not installed: fsspec says so later
        used = set()
    if not used & set(match.group(2).split(":")):
        raise InputError(f"{key} {redact(url)!r}: {protocol}:// does not take credentials in the URL; remove them and "
                         f"give them {CREDENTIAL_HINTS.get(protocol, 'the way its filesystem reads them')}")
